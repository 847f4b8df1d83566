"""Arguments several subcommands share: which event log to read, and how."""

from __future__ import annotations

import argparse

__all__ = ["DATA_HELP", "add_data_arguments", "dataset_from_args"]

DATA_HELP = ("event log: 'synthetic', a dataset folder (ML-1M sequences.txt.gz, MovieLens ratings.csv, "
             "ratings.dat or ml-100k u.data, a RecBole <name>.inter, session-rec train.tsv[+test.tsv], Amazon "
             "reviews.jsonl, OTTO or product-schema train.jsonl) or a file: 'user item [ts]' lines, one "
             "'user item item ...' line per user, CSV/TSV with or without a header, SessionId/ItemId/Time "
             "sessions, JSON lines (see README, 'Event logs')")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and how to read it (train and evaluate share these)."""
    from encoders.data import FORMATS

    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="how to read --data [default: auto, sniffed from the file; name it where a sniff "
                             "could be wrong, e.g. lines-per-user whose users all have one or two items]")
    parser.add_argument("--test", default=None, help="held-out test sessions (same format as --data) [default: test.tsv[.gz] beside a "
                             "folder's train.tsv[.gz], else none]")
    for role in ("user", "item", "time", "rating", "action"):
        parser.add_argument(f"--{role}-col", default=None, metavar="NAME",
                            help=f"CSV/TSV: the {role} column, when the header's name is not a common one; "
                                 "without a header, its field number from 1 [default: recognised by name, "
                                 "or by position: user 1, item 2, rating 3 and time 4 (time 3 of 3 fields)]")
    parser.add_argument("--protocol", default="auto", choices=("auto", "leave-one-out", "session"),
                        help="evaluation split: leave-one-out per user, or next item within held-out "
                             "sessions [default: session when there are test sessions]")


def dataset_from_args(path: str, args: argparse.Namespace | None = None):
    """Load ``path``, read as the --format / --*-col / --test flags of ``args`` say (when present)."""
    from encoders.data import load_dataset
    from encoders.data import Columns

    if args is None or not hasattr(args, "format"):
        return load_dataset(path)
    columns = Columns(args.user_col, args.item_col, args.time_col, args.rating_col, args.action_col)
    return load_dataset(path, args.format, columns, args.test)
