"""Readable one-line forms of recommendation events, for `tail` and the demo."""

from __future__ import annotations

__all__ = ["format_recommendation", "format_interests"]


def format_recommendation(event: dict, titles: dict[str, str], items: int = 3) -> str:
    """One readable line for a recommendation event."""
    names = [titles.get(i["item_id"], i["item_id"]) for i in event["items"][:items]]
    interests = ",".join(event["interests"]) or "-"
    return (f"user {event['user_id']:>6} v{event['version']:<3} [{interests}] -> "
            + "; ".join(_clip(name) for name in names))


def format_interests(event: dict) -> str:
    """One readable line of a recommendation event's interests: drift, session, categories, next action."""
    profile = event.get("interest_profile") or {}
    parts = []
    long_term = profile.get("long_term") or {}
    if "long_term" in (event.get("interests") or ()):
        shift = long_term.get("drift")
        parts.append("long-term " + ("new" if shift is None else f"drift {shift:.3f}"))
    elif long_term.get("version") is not None:
        parts.append(f"long-term as of v{long_term['version']}")
    session = profile.get("session") or {}
    if session.get("events"):
        parts.append(f"session {session['events']} events")
    top = (profile.get("categories") or {}).get("top") or []
    if top:
        parts.append("categories " + ", ".join(f"{name} {share:.2f}" for name, share in top[:3]))
    if (profile.get("text") or {}).get("texts"):
        parts.append(f"texts {profile['text']['texts']}")
    if event.get("next_action"):
        best = sorted(event["next_action"].items(), key=lambda kv: -kv[1])[:2]
        parts.append("next " + " ".join(f"{name} {p:.2f}" for name, p in best))
    return "      interests: " + (" | ".join(parts) or "-")


def _clip(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
