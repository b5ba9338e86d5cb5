"""Prices as data: the table nbcloud quotes from, and the parsers that fill it from the AWS Pricing API.

Why a shipped snapshot: ``nbcloud up`` must show what a machine costs before it starts one, without a
network round trip and without the ``pricing:GetProducts`` permission many users lack. The snapshot is dated
(``as_of``) so the CLI can say how old its figures are; ``nbcloud prices refresh`` writes a fresher copy to the
user data directory, which wins whenever it is newer. Everything here is pure apart from reading those two files.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "HOURS_PER_MONTH",
    "PriceTable",
    "load_prices",
    "merge_refresh",
    "parse_ebs_product",
    "parse_pricing_product",
    "user_prices_path",
]

log = logging.getLogger(__name__)

#: AWS converts hourly to monthly with 730 hours (8760 / 12); so do we, so our monthly figures match theirs.
HOURS_PER_MONTH = 730.0

_PRICE_FILE = "prices.json"


@dataclass(frozen=True)
class PriceTable:
    """On-demand hourly prices and EBS storage prices per region, in ``currency`` (always USD on AWS).

    ``on_demand[region][instance_type]`` is dollars per hour for Linux, shared tenancy, no pre-installed software;
    ``ebs_gb_month[region][volume_type]`` and ``snapshot_gb_month[region]`` are dollars per GB-month.
    """

    as_of: date
    source: str
    currency: str = "USD"
    on_demand: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    ebs_gb_month: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    snapshot_gb_month: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""

    # -- lookups ---------------------------------------------------------------------------------------------

    def hourly(self, instance_type: str, region: str) -> float | None:
        """Dollars per hour, or None when no price is known (a type the snapshot lacks or a region it does not
        cover). Callers show "price unknown" rather than guess: a wrong low figure is worse than none."""
        return self.on_demand.get(region, {}).get(instance_type)

    def monthly(self, instance_type: str, region: str) -> float | None:
        """Hourly × 730, the figure AWS's own calculator shows for an always-on machine."""
        hourly = self.hourly(instance_type, region)
        return None if hourly is None else hourly * HOURS_PER_MONTH

    def ebs_monthly(self, size_gb: float, region: str, volume_type: str = "gp3") -> float:
        """Dollars per month for a volume of ``size_gb``, billed whether or not the instance runs.

        A region or volume type the table lacks falls back to the highest price known for it: storage is the
        bill users forget, so the estimate errs high rather than low.
        """
        return size_gb * self._ebs_rate(region, volume_type)

    def snapshot_monthly(self, size_gb: float, region: str) -> float:
        """Dollars per month for ``size_gb`` of snapshot data (standard tier); unknown region → highest known."""
        rate = self.snapshot_gb_month.get(region)
        if rate is None:
            rate = max(self.snapshot_gb_month.values(), default=0.0)
        return size_gb * rate

    def regions(self) -> list[str]:
        return sorted(self.on_demand)

    def instance_types(self, region: str) -> list[str]:
        return sorted(self.on_demand.get(region, {}))

    def _ebs_rate(self, region: str, volume_type: str) -> float:
        rates = self.ebs_gb_month.get(region)
        if rates and volume_type in rates:
            return rates[volume_type]
        same_type = [r[volume_type] for r in self.ebs_gb_month.values() if volume_type in r]
        if same_type:
            return max(same_type)
        if rates:
            return max(rates.values())
        return max((v for r in self.ebs_gb_month.values() for v in r.values()), default=0.0)

    # -- transforms ------------------------------------------------------------------------------------------

    def scaled(self, factor: float) -> PriceTable:
        """Every price × ``factor``. The sandbox uses it to make a budget cap trip in seconds instead of hours."""
        if factor <= 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        return PriceTable(
            as_of=self.as_of,
            source=f"{self.source} ×{factor:g}" if factor != 1 else self.source,
            currency=self.currency,
            on_demand={r: {t: p * factor for t, p in types.items()} for r, types in self.on_demand.items()},
            ebs_gb_month={r: {t: p * factor for t, p in v.items()} for r, v in self.ebs_gb_month.items()},
            snapshot_gb_month={r: p * factor for r, p in self.snapshot_gb_month.items()},
            notes=self.notes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "source": self.source,
            "currency": self.currency,
            "notes": self.notes,
            "on_demand": {r: dict(sorted(v.items())) for r, v in sorted(self.on_demand.items())},
            "ebs_gb_month": {r: dict(sorted(v.items())) for r, v in sorted(self.ebs_gb_month.items())},
            "snapshot_gb_month": dict(sorted(self.snapshot_gb_month.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """Validate while converting: a hand-edited or truncated file must fail here, not mid-``up``."""
        try:
            return cls(
                as_of=date.fromisoformat(str(data["as_of"])),
                source=str(data.get("source", "")),
                currency=str(data.get("currency", "USD")),
                on_demand={str(r): {str(t): float(p) for t, p in v.items()} for r, v in data["on_demand"].items()},
                ebs_gb_month={
                    str(r): {str(t): float(p) for t, p in v.items()} for r, v in data.get("ebs_gb_month", {}).items()
                },
                snapshot_gb_month={str(r): float(p) for r, p in data.get("snapshot_gb_month", {}).items()},
                notes=str(data.get("notes", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a price table: {exc!r}") from exc


# -- loading -------------------------------------------------------------------------------------------------


def user_prices_path() -> Path:
    """Where ``nbcloud prices refresh`` writes its table (the user data directory)."""
    from ..config import paths

    return paths().data_dir / _PRICE_FILE


# Parsed once per process (per file version for the refreshed copy): `status` quotes every instance it shows, and
# parsing the table for each cost ~1 ms per row. Callers never change a table (merge_refresh builds a new one).
@functools.cache
def _shipped() -> PriceTable:
    text = resources.files("nbcloud").joinpath("data", _PRICE_FILE).read_text(encoding="utf-8")
    return PriceTable.from_dict(json.loads(text))


@functools.lru_cache(maxsize=4)
def _refreshed(path: Path, mtime_ns: int, size: int) -> PriceTable:
    return PriceTable.from_dict(json.loads(path.read_text(encoding="utf-8")))


def load_prices(path: Path | None = None) -> PriceTable:
    """The table to quote from.

    With ``path``: exactly that file (errors propagate: the caller asked for it). Without: the shipped snapshot,
    or the refreshed copy in the user data directory when it is at least as new. A damaged refreshed copy is
    logged and ignored, so a bad refresh can never stop ``up`` from showing a price.
    """
    if path is not None:
        return PriceTable.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    shipped = _shipped()
    try:
        candidate = user_prices_path()
        if not candidate.exists():
            return shipped
        stat = candidate.stat()
        refreshed = _refreshed(candidate, stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError) as exc:
        log.warning("ignoring refreshed price table: %s", exc)
        return shipped
    return refreshed if refreshed.as_of >= shipped.as_of else shipped


def merge_refresh(table: PriceTable, fetched: Mapping[str, Any]) -> PriceTable:
    """Overlay freshly fetched prices on ``table``.

    ``fetched`` has the file's shape but may be partial (``on_demand``, ``ebs_gb_month``, ``snapshot_gb_month``,
    optional ``as_of``/``source``). Prices not fetched keep their old value, so a refresh limited to a few regions
    or types never loses the rest.
    """
    on_demand = {r: dict(v) for r, v in table.on_demand.items()}
    for region, types in fetched.get("on_demand", {}).items():
        on_demand.setdefault(region, {}).update({t: float(p) for t, p in types.items()})
    ebs = {r: dict(v) for r, v in table.ebs_gb_month.items()}
    for region, types in fetched.get("ebs_gb_month", {}).items():
        ebs.setdefault(region, {}).update({t: float(p) for t, p in types.items()})
    snapshots = dict(table.snapshot_gb_month)
    snapshots.update({r: float(p) for r, p in fetched.get("snapshot_gb_month", {}).items()})
    as_of = fetched.get("as_of")
    return PriceTable(
        as_of=date.fromisoformat(str(as_of)) if as_of else date.today(),
        source=str(fetched.get("source") or "AWS Pricing API (refreshed)"),
        currency=table.currency,
        on_demand=on_demand,
        ebs_gb_month=ebs,
        snapshot_gb_month=snapshots,
        notes=str(fetched.get("notes", "")) or table.notes,
    )


# -- Pricing API PriceList parsers ----------------------------------------------------------------------------


def _on_demand_usd(product: Mapping[str, Any], unit: str) -> float | None:
    """The single on-demand USD price of ``unit`` (Hrs, GB-Mo) in a PriceList entry; None if absent."""
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            if dim.get("unit") != unit:
                continue
            usd = dim.get("pricePerUnit", {}).get("USD")
            if usd is not None:
                return float(usd)
    return None


def _load(entry: str | Mapping[str, Any]) -> Mapping[str, Any]:
    return json.loads(entry) if isinstance(entry, str | bytes) else entry


def parse_pricing_product(entry: str | Mapping[str, Any]) -> tuple[str, str, float] | None:
    """``(instance_type, region, hourly)`` from one ``get_products`` PriceList entry (a JSON string).

    None for entries that are not what nbcloud launches (Windows, dedicated tenancy, SQL pre-installed,
    reservation capacity, or a zero placeholder price), so a loosely filtered query cannot poison the table.
    Malformed JSON raises ValueError.
    """
    product = _load(entry)
    attrs = product.get("product", {}).get("attributes", {})
    wanted = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
    if any(attrs.get(k) != v for k, v in wanted.items()):
        return None
    instance_type, region = attrs.get("instanceType"), attrs.get("regionCode")
    if not instance_type or not region:
        return None
    hourly = _on_demand_usd(product, "Hrs")
    if not hourly:
        return None
    return instance_type, region, hourly


def parse_ebs_product(entry: str | Mapping[str, Any]) -> tuple[str, str, float] | None:
    """``(region, kind, gb_month)`` from an EBS PriceList entry; ``kind`` is a volume type or ``"snapshot"``.

    Volume storage has productFamily "Storage" with ``volumeApiName``; standard-tier snapshots have usagetype
    ending in ``EBS:SnapshotUsage``. IOPS/throughput and archive-tier entries give None.
    """
    product = _load(entry)
    info = product.get("product", {})
    attrs = info.get("attributes", {})
    region = attrs.get("regionCode")
    if not region:
        return None
    family = info.get("productFamily")
    if family == "Storage" and attrs.get("volumeApiName"):
        kind = str(attrs["volumeApiName"])
    elif family == "Storage Snapshot" and str(attrs.get("usagetype", "")).endswith("EBS:SnapshotUsage"):
        kind = "snapshot"
    else:
        return None
    price = _on_demand_usd(product, "GB-Mo")
    if price is None:
        return None
    return region, kind, price
