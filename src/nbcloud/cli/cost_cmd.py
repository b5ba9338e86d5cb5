"""autostop, hold, release, cost, prices: what an instance costs and when it stops itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from ..errors import UsageError
from .complete import instance_names
from .output import emit, json_option, progress, table


def _ctx():
    from ..ops import Context

    return Context.create()


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.argument("duration")
@json_option
def autostop(name: str, duration: str, as_json: bool) -> None:
    """Stop NAME after DURATION idle (30m, 2h) or `off`."""
    from ..ops.agent import set_autostop

    result = set_autostop(_ctx(), name, duration)
    emit(result, as_json, autostop_text)


def autostop_text(result: dict) -> str:
    """From the seconds, not the words typed: a bare `1` is a minute, and "stops after 1 idle" said nothing."""
    seconds = result["idle_stop_seconds"]
    if not seconds:
        return f"{result['name']}: autostop off"
    limit = next(f"{seconds // size}{unit}" for size, unit in ((3600, "h"), (60, "m"), (1, "s")) if seconds % size == 0)
    return f"{result['name']}: stops after {limit} idle"


@click.command()
@click.argument("name")
@click.argument("reason", required=False)
@json_option
def hold(name: str, reason: str | None, as_json: bool) -> None:
    """Keep NAME running until `nbcloud release NAME`, even when idle (e.g. a job nbcloud cannot see)."""
    from ..ops.agent import hold as hold_instance

    result = hold_instance(_ctx(), name, reason)
    emit(result, as_json, lambda r: f"{r['name']}: held ({r['reason']}); `nbcloud release {r['name']}` lets it "
                                    "stop when idle again")


@click.command()
@click.argument("name")
@json_option
def release(name: str, as_json: bool) -> None:
    """Undo `nbcloud hold NAME`: it stops again after its idle limit (counted from now)."""
    from ..ops.agent import release as release_instance

    result = release_instance(_ctx(), name)
    emit(result, as_json, lambda r: f"{r['name']}: released" + ("" if r["was_held"] else " (it was not held)"))


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    from ..models import parse_duration

    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        pass
    refused = UsageError(f"invalid --since {text!r}", "write a duration like 7d or 24h, or a date like 2026-11-01")
    try:  # the idle limit's parser: its own errors speak of 30s floors and "off", which --since does not take
        seconds = parse_duration(text, upper=None)
    except UsageError:
        raise refused from None
    if seconds is None:
        raise refused
    try:
        return datetime.now(UTC) - timedelta(seconds=seconds)
    except OverflowError:  # before year 1 (`--since 1e40d`)
        raise refused from None


@click.command()
@click.option("--since", default=None, help="Only cost after this (7d, 24h, or an ISO date).")
@json_option
def cost(since: str | None, as_json: bool) -> None:
    """Report accrued cost per instance and in total."""
    from ..money.cost import format_usd
    from ..ops import cost_report

    report = cost_report(_ctx(), _since(since))

    def text(r) -> str:
        rows = [{"name": line.name, "type": line.instance_type, "state": line.state, "$/h": format_usd(line.hourly),
                 "accrued": format_usd(line.accrued)} for line in r.lines]
        body = table(rows, ["name", "type", "state", "$/h", "accrued"]) if rows else "no instances"
        notes = "".join(f"\nnote: {note}" for note in r.notes)  # e.g. a region that could not be refreshed
        return f"{body}\ntotal accrued: {format_usd(r.total_accrued_usd)}{notes}"

    emit(report, as_json, text)


@click.group()
def prices() -> None:
    """Show or refresh the price table (a dated snapshot ships with nbcloud)."""


@prices.command("show")
@click.argument("instance_type", required=False)
@click.option("--region", default="us-east-1", show_default=True)
@json_option
def prices_show(instance_type: str | None, region: str, as_json: bool) -> None:
    """Show prices of the table in use (and its date)."""
    from ..money.pricing import load_prices

    table_ = load_prices()
    if region not in table_.regions():  # an unknown region listed nothing, exit 0
        raise UsageError(f"no prices for region {region!r} in the table",
                         f"it has {', '.join(table_.regions())}; `nbcloud prices refresh --region REGION` adds an "
                         "AWS region (needs credentials)")
    types = [instance_type] if instance_type else table_.instance_types(region)
    rows = [{"type": t, "hourly_usd": table_.hourly(t, region)} for t in types]
    emit({"as_of": table_.as_of.isoformat(), "source": table_.source, "region": region, "prices": rows}, as_json,
         lambda r: f"prices as of {r['as_of']} ({r['source']}), {region}\n"
                   + table([{"type": x["type"], "$/h": x["hourly_usd"]} for x in r["prices"]], ["type", "$/h"]))


@prices.command("refresh")
@click.option("--region", "regions", multiple=True, help="Regions to fetch (default: those in the table).")
@click.option("--profile", default=None)
@json_option
def prices_refresh(regions: tuple[str, ...], profile: str | None, as_json: bool) -> None:
    """Fetch current on-demand and EBS prices from the AWS Pricing API."""
    import botocore.session

    from ..money.pricing import user_prices_path
    from ..ops.costs import refresh_prices
    from ..providers.registry import price_source

    known = botocore.session.get_session().get_available_regions("ec2")
    for region in regions:  # `--region ''` reached GetProducts' own parameter check: a traceback
        if known and region not in known:
            raise UsageError(f"unknown AWS region {region!r}", "see `aws ec2 describe-regions`")
    source = price_source(profile)
    with progress("fetching prices from the AWS Pricing API", as_json):
        table_ = refresh_prices(source, regions)
    emit({"as_of": table_.as_of.isoformat(), "path": str(user_prices_path())}, as_json,
         lambda r: f"prices refreshed ({r['as_of']}) → {r['path']}")
