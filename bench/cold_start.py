"""Cold start: can items first seen after training be recommended from their title and categories?

A time split: the model trains on the clicks before the cut (a quantile of
click times), with `interest-updater train`'s default flags and text fusion
on, within --max-seconds; the items first clicked after it are *new*,
unknown to the model. Each later click on a new item (a user's first on it) is a case: the
user's clicks before it are the input, and the item must be ranked among the
new items announced by then (first seen at or before the case), the user's
own excluded: the "new arrivals" shelf. Full ranking over that shelf,
HR@10 and NDCG@10, for:

- text, projected: the item's "title | categories" string through MiniLM and
  the checkpoint's trained text projection (`TextFusion.project`, trained to
  map such strings to their items' embeddings), scored against the user's
  behaviour vector;
- text, neighbours: the softmax-weighted mean of the embeddings of the 20
  known items that projection scores highest (a vector built from trained
  item embeddings only);
- newest in the user's top category: new items of the category the user
  clicked most, newest first, then the other new items, newest first;
- newest: every new item, newest first.

    python bench/cold_start.py --data ../shared/data/ml-latest-small --threads 1

prints one line per rule, e.g. ``text, projected: HR@10 0.1234 NDCG@10 0.0567``.
The checkpoint is trained once into ``--out`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.data import Dataset, load_dataset  # noqa: E402
from encoders.data.records import Event  # noqa: E402
from encoders.vocab import FIRST_ITEM, item_text  # noqa: E402

NEIGHBOURS = 20
K = 10


@dataclass(frozen=True)
class Case:
    history: list[Event]  # the user's clicks before the case, oldest first
    target: str
    ts: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-latest-small", help="a dataset with item titles")
    parser.add_argument("--cut", type=float, default=0.8, help="the training cut, a quantile of click times")
    parser.add_argument("--out", default="runs/cold-start", help="where the checkpoint is trained (and reused)")
    parser.add_argument("--max-seconds", type=float, default=900, help="training budget, seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--train-flags", default="",
                        help="more `interest-updater train` flags for the model, e.g. \"--no-refit\"")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = load_dataset(args.data)
    cut = int(np.quantile([c.ts for c in dataset.clicks], args.cut))
    first_seen = first_seen_times(dataset.clicks)
    checkpoint = Path(args.out)
    if not (checkpoint / "config.json").is_file():
        train_before(dataset, cut, checkpoint, args.max_seconds, shlex.split(args.train_flags))

    from encoders.inference import InterestEncoder

    encoder = InterestEncoder.from_checkpoint(checkpoint, device="cpu")
    if encoder.fusion is None:
        sys.exit(f"cold_start: {checkpoint} has no text projection (train with titles and --text-fusion)")
    new = sorted(i for i, t in first_seen.items() if t >= cut and i not in encoder.vocab and described(dataset, i))
    cases = new_item_cases(dataset, set(new), first_seen, cut)
    print(f"{dataset.name}: cut at the {args.cut:.0%} quantile of click times; {len(new)} new items with a title "
          f"or categories, {len(cases)} cases (a user's first click on a new item)")
    users = user_vectors(encoder, cases)
    projected, neighbours = text_vectors(encoder, dataset, new)
    rules = {"text, projected": scored(users, projected), "text, neighbours": scored(users, neighbours),
             "newest in the user's top category": newest_in_top_category(dataset, cases, new, first_seen),
             "newest": lambda i: np.array([first_seen[n] for n in new], dtype=np.float64)}
    # An item is announced at its first click at the latest; the data cannot say how much earlier. Where the
    # case IS that first click, "newest" rules find the target by its announcement time alone: report apart.
    groups = {"all cases": range(len(cases)),
              "the target clicked by someone before": [i for i, c in enumerate(cases) if first_seen[c.target] < c.ts],
              "the target's first click ever": [i for i, c in enumerate(cases) if first_seen[c.target] == c.ts]}
    for group, ids in groups.items():
        print(f"{group} ({len(ids)}):")
        for name, rule in rules.items():
            hr, ndcg = shelf_metrics([cases[i] for i in ids], new, first_seen, rule, list(ids))
            print(f"  {name}: HR@{K} {hr:.4f} NDCG@{K} {ndcg:.4f}")


def first_seen_times(clicks: list[Event]) -> dict[str, int]:
    first: dict[str, int] = {}
    for c in clicks:
        first[c.item_id] = min(first.get(c.item_id, c.ts), c.ts)
    return first


def described(dataset: Dataset, item: str) -> bool:
    return bool(dataset.catalogue.titles.get(item) or dataset.catalogue.categories.get(item))


def train_before(dataset: Dataset, cut: int, out: Path, max_seconds: float, more_flags: list[str]) -> None:
    """The model `interest-updater train` makes with its default flags (text fusion on), from the events before the cut.

    The flags' defaults come from the CLI's own parser, so this bench trains what a user of ``train`` gets;
    ``more_flags`` are more of its flags (``--no-refit``).
    """
    from encoders.training.train import train
    from streams.cli import _parser
    from streams.cli.offline import train_config, with_data_defaults

    before = Dataset(dataset.name, [c for c in dataset.clicks if c.ts < cut],
                     [t for t in dataset.texts if t.ts < cut], dataset.catalogue)
    flags = _parser().parse_args(["train", "--data", dataset.name, "--out", str(out),
                                  "--max-seconds", str(max_seconds), *more_flags])
    train(before, out, with_data_defaults(train_config(flags).replace(text_fusion=True), flags, before))


def new_item_cases(dataset: Dataset, new: set[str], first_seen: dict[str, int], cut: int) -> list[Case]:
    cases = []
    for clicks in dataset.sequences().values():
        seen: set[str] = set()
        for n, click in enumerate(clicks):
            if click.ts >= cut and click.item_id in new and click.item_id not in seen and n > 0:
                cases.append(Case(clicks[:n], click.item_id, click.ts))
            seen.add(click.item_id)
    return cases


def user_vectors(encoder, cases: list[Case]) -> np.ndarray:
    """Each case's behaviour vector (new items in the history are the model's unknown item, as in the worker)."""
    windows = [[(e.item_id, e.action, e.ts) for e in case.history[-encoder.max_len:]] for case in cases]
    return np.concatenate([encoder.encode(windows[i: i + 256]) for i in range(0, len(windows), 256)])


def text_vectors(encoder, dataset: Dataset, new: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each new item's vector from its "title | categories" string: projected, and the mean of its neighbours."""
    from encoders.nn.text import TextEncoder

    cat = dataset.catalogue
    strings = [item_text(cat.titles.get(i), cat.categories.get(i)) for i in new]
    with torch.no_grad():
        projected = encoder.fusion.project(torch.from_numpy(TextEncoder(device="cpu").embed(strings)).float())
        table = encoder._table[FIRST_ITEM:].cpu()
        scores, rows = (projected @ table.T).topk(NEIGHBOURS, dim=1)
        neighbours = (torch.softmax(scores, dim=1)[:, :, None] * table[rows]).sum(1)
    return projected.numpy(), neighbours.numpy()


def scored(users: np.ndarray, items: np.ndarray):
    return lambda i: items @ users[i]


def newest_in_top_category(dataset: Dataset, cases: list[Case], new: list[str], first_seen: dict[str, int]):
    categories = dataset.catalogue.categories
    newness = np.array([first_seen[n] for n in new], dtype=np.float64)
    newness = (newness - newness.min()) / max(np.ptp(newness), 1.0)  # in [0, 1]: the category decides first
    members: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(new)))
    for j, item in enumerate(new):
        for c in categories.get(item, ()):
            members[c][j] = 1.0

    def rule(i: int) -> np.ndarray:
        counts = Counter(c for e in cases[i].history for c in categories.get(e.item_id, ()))
        top = counts.most_common(1)[0][0] if counts else None
        return (members[top] if top is not None else 0.0) * 2.0 + newness

    return rule


def shelf_metrics(cases: list[Case], new: list[str], first_seen: dict[str, int], rule,
                  ids: list[int]) -> tuple[float, float]:
    """HR@K, NDCG@K of each case's target among the new items announced by then, the user's own excluded.

    ``rule(i)`` scores the new items for case number ``ids[j]`` of the full list.
    """
    column = {item: j for j, item in enumerate(new)}
    announced = np.array([first_seen[n] for n in new])
    hits = gains = 0.0
    for i, case in zip(ids, cases):
        scores = np.asarray(rule(i), dtype=np.float64).copy()
        scores[announced > case.ts] = -np.inf
        own = [column[e.item_id] for e in case.history if e.item_id in column]
        scores[own] = -np.inf
        rank = int((scores > scores[column[case.target]]).sum())
        if rank < K:
            hits += 1
            gains += 1.0 / np.log2(rank + 2)
    return hits / max(len(cases), 1), gains / max(len(cases), 1)


if __name__ == "__main__":
    main()
