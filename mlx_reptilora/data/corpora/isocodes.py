"""Debian's iso-codes databases as shipped by PyPI `pycountry` (LGPL-2.1-or-later): ISO 3166-1 country
names, ISO 639-3 language names and ISO 3166-2 subdivision names, with the gettext translations of
the first two (its locales/ folder of .mo files). Three choice tasks, one group (they share the
names): a country name in one of ten languages -> which language; the same with language names; a
subdivision (region, province, municipality) -> which of ten countries it belongs to."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

from ..examples import Example
from ..spec import Offline
from . import common

INSTALL = "pip install pycountry"
GROUP = "iso-codes"
SOURCE = "iso-codes via pycountry (PyPI: pycountry)"
LICENCE = "LGPL-2.1-or-later"
# Latin-script languages with good coverage: which script a name is in never gives the answer away.
LANGUAGES = {"cs": "Czech", "de": "German", "es": "Spanish", "fr": "French", "it": "Italian", "nl": "Dutch",
             "pl": "Polish", "pt": "Portuguese", "sv": "Swedish", "tr": "Turkish"}
# The ten countries with the most ISO 3166-2 subdivisions (pycountry 26.2).
COUNTRIES = {"CZ": "Czechia", "EE": "Estonia", "FR": "France", "GB": "United Kingdom", "IT": "Italy",
             "MA": "Morocco", "PH": "Philippines", "RU": "Russia", "SI": "Slovenia", "UG": "Uganda"}
PER_CLASS = 250  # a cap per answer, so that no option dominates (French has 2000+ language names)
DATABASES = ("iso3166-1", "iso639-3", "iso3166-2")


def _root() -> Path:
    spec = importlib.util.find_spec("pycountry")
    path = Path(spec.origin).parent if spec and spec.origin else Path("site-packages/pycountry")
    return common.require(path / "databases", "pycountry (PyPI)", INSTALL).parent


def _sources(root: Path) -> list[Path]:
    out = [root / "databases" / f"{db}.json" for db in DATABASES]
    return out + [root / "locales" / lang / "LC_MESSAGES" / f"{db}.mo" for lang in LANGUAGES for db in DATABASES[:2]]


def _order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _translated(entries: list[dict], catalogs: dict[str, dict], kind: str) -> list[dict]:
    """One row per (entry, language) whose translation has a word that the English name lacks ("Swahili"
    for "Swahili (individual language)" and "Vlach Romani" for "Romani, Vlach" are still English) and
    differs from every other chosen language's spelling of any entry (then it has no one answer)."""
    rows, langs_of = [], {}
    for e in entries:
        english = set(re.findall(r"\w+", e["name"].casefold()))
        for lang, catalog in catalogs.items():
            text = " ".join(str(catalog.get(e["name"], "")).split())
            if text and not set(re.findall(r"\w+", text.casefold())) <= english:
                rows.append({"id": f"{kind}.{e['code']}.{lang}", "text": text, "lang": lang})
                langs_of.setdefault(text.casefold(), set()).add(lang)
    rows = [r for r in rows if len(langs_of[r["text"].casefold()]) == 1]
    return _capped(_unique(rows), "lang")


def _unique(rows: list[dict]) -> list[dict]:
    """One row per input (the first in id order: deterministic)."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: r["id"]):
        if r["text"].casefold() not in seen:
            seen.add(r["text"].casefold())
            out.append(r)
    return out


def _capped(rows: list[dict], label: str) -> list[dict]:
    count, out = {}, []
    for r in sorted(rows, key=lambda r: _order(r["id"])):
        count[r[label]] = count.get(r[label], 0) + 1
        if count[r[label]] <= PER_CLASS:
            out.append(r)
    return sorted(out, key=lambda r: r["id"])


def _corpus() -> dict[str, list[dict]]:
    root = _root()

    def build():
        import gettext

        def load(db: str) -> list[dict]:
            return json.loads((root / "databases" / f"{db}.json").read_text(encoding="utf-8"))[db.removeprefix("iso")]

        def catalogs(db: str) -> dict[str, dict]:
            out = {}
            for lang in LANGUAGES:
                with open(root / "locales" / lang / "LC_MESSAGES" / f"{db}.mo", "rb") as f:
                    out[lang] = gettext.GNUTranslations(f)._catalog  # msgid (English) -> msgstr
            return out

        countries = [{"code": c["alpha_2"], "name": c["name"]} for c in load("iso3166-1")]
        languages = [{"code": x["alpha_3"], "name": x["name"]} for x in load("iso639-3")]
        subdivisions = []
        for s in load("iso3166-2"):
            country = s["code"].split("-")[0]
            if country in COUNTRIES:
                subdivisions.append({"id": f"subdivision.{s['code']}", "text": " ".join(s["name"].split()),
                                     "country": country})
        # A name found in two of the countries (or twice in one: a region and its province) has no one answer.
        homes = {}
        for s in subdivisions:
            homes.setdefault(s["text"].casefold(), set()).add(s["country"])
        subdivisions = [s for s in subdivisions if len(homes[s["text"].casefold()]) == 1]
        return [{"task": "country", **r} for r in _translated(countries, catalogs("iso3166-1"), "country")] + \
               [{"task": "language", **r} for r in _translated(languages, catalogs("iso639-3"), "language")] + \
               [{"task": "subdivision", **r} for r in _capped(_unique(subdivisions), "country")]

    # This file is a source too: a change of what the parser keeps rebuilds the cache.
    records = common.cached("isocodes", _sources(root) + [Path(__file__)], build)
    out = {}
    for r in records:
        out.setdefault(r["task"], []).append(r)
    return out


def _examples(task: str, label: str, names: dict[str, str]) -> dict[str, list[Example]]:
    return {s: [Example(r["text"], names[r[label]], r["id"]) for r in v]
            for s, v in common.split(_corpus()[task]).items()}


def _options(names: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted(names.values()))


def tasks() -> list[Offline]:
    langs, countries = _options(LANGUAGES), _options(COUNTRIES)
    return [
        Offline("iso-country-language", GROUP,
                f"Which language is this country name written in? Answer with one of: {', '.join(langs)}.",
                f"{SOURCE}: a translated ISO 3166-1 country name -> its language", LICENCE,
                lambda cfg: _examples("country", "lang", LANGUAGES), kind="choice", metric="accuracy", choices=langs),
        Offline("iso-language-language", GROUP,
                f"Which language is this language name written in? Answer with one of: {', '.join(langs)}.",
                f"{SOURCE}: a translated ISO 639-3 language name -> its language", LICENCE,
                lambda cfg: _examples("language", "lang", LANGUAGES), kind="choice", metric="accuracy", choices=langs),
        Offline("iso-subdivision-country", GROUP,
                f"Which country is this region, province or municipality in? Answer with one of: {', '.join(countries)}.",
                f"{SOURCE}: an ISO 3166-2 subdivision name -> its country", LICENCE,
                lambda cfg: _examples("subdivision", "country", COUNTRIES), kind="choice", metric="accuracy",
                choices=countries),
    ]
