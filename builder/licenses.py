"""The license ids the Hugging Face Hub takes in a dataset card's ``license`` field, as data.

The Hub refuses a card whose ``license`` is not one of these ("license" must be one of [...]),
and it does so at the card's commit, after the shards were uploaded; the recipe's license is
part of the manifest id, so changing it means a new build. A recipe is therefore checked
against this list when it is read. ``other`` (with the license named in the description) is
always accepted. The list is the Hub's as of huggingface_hub issue #4218 (2026-05); when the
Hub adds a license, add its id here.
"""

from __future__ import annotations

from typing import Optional

HUB_LICENSES: tuple[str, ...] = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research", "intel-research",
    "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0", "openrail++",
    "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license",
    "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4",
    "grok2-community", "gemma", "unknown", "other",
)


def license_problem(license_id: str) -> Optional[str]:
    """Why the Hub would refuse ``license_id`` in a card, with the id it most likely means; None
    when it takes it."""
    if license_id in HUB_LICENSES:
        return None
    import difflib

    spelled = _spelled(license_id)
    near = spelled if spelled in HUB_LICENSES else next(iter(difflib.get_close_matches(spelled, HUB_LICENSES, n=1, cutoff=0.6)), None)
    hint = f"did you mean '{near}'? " if near else ""
    return (f"not a license id the Hugging Face Hub takes in a dataset card (it would refuse the card when publishing); "
            f"{hint}give a Hub id such as cc-by-4.0, or 'other' and name the license in the description")


def card_license(license_id: str) -> dict[str, str]:
    """The card header's license fields: ``license_id`` itself when the Hub takes it, else
    ``other`` with ``license_name`` (the Hub's way to name any other license), so a benchmark
    built before recipes were checked still publishes."""
    if license_problem(license_id) is None:
        return {"license": license_id}
    spelled = _spelled(license_id)
    if spelled in HUB_LICENSES:  # 'CC BY 4.0' is cc-by-4.0
        return {"license": spelled}
    import re

    return {"license": "other", "license_name": re.sub(r"[^a-z0-9.]+", "-", license_id.lower()).strip("-.") or "custom"}


def _spelled(license_id: str) -> str:
    """``license_id`` spelled as Hub ids are: 'CC BY 4.0' -> 'cc-by-4.0'."""
    return "-".join(license_id.lower().replace("_", " ").split())
