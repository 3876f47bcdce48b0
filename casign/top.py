"""`casign top`: the figures of `casign metrics` as a live view in the terminal."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from casign.figures import Reading
from casign.queue_view import describe_age
from est.figures import EstFigures

# The issuance steps in the order a job goes through them (worker/issuance/batch.py's laps).
STEP_ORDER = ("admit", "build", "lint", "reserve", "sign", "verify", "publish")
TOP_EST_CODES = 3  # refusal codes shown per EST server, the most frequent first


def issued_rate(reading: Reading, previous: Reading | None) -> float | None:
    """Certificates per second between two readings; None for the first."""
    if previous is None or reading.at <= previous.at:
        return None
    issued = reading.total("casign_issued_total") - previous.total("casign_issued_total")
    return max(issued, 0.0) / (reading.at - previous.at)


def render(reading: Reading, previous: Reading | None, title: str) -> Group:
    """One frame: the headline figures, refusals by code, and time per step."""
    rate = issued_rate(reading, previous)
    headline = Table.grid(padding=(0, 2))
    headline.add_column(style="bold")
    headline.add_column()
    rows = (
        ("rate", "-" if rate is None else f"{rate:,.0f} certificates/s"),
        ("issued", f"{reading.total('casign_issued_total'):,.0f}"),
        ("refused", f"{reading.total('casign_refused_total'):,.0f}"),
        ("failed", f"{reading.total('casign_failed_total'):,.0f}"),
        ("recovered", f"{reading.total('casign_recovered_total'):,.0f}"),
        ("queue", _maybe(reading.queue_depth, "{:,} batch(es) waiting")),
        (
            "oldest waiting",
            "-"
            if reading.oldest_waiting_seconds is None
            else describe_age(reading.oldest_waiting_seconds),
        ),
        ("workers seen", _maybe(reading.workers_seen, "{} in the last minute")),
        (
            "CRL age",
            "-" if reading.crl_age_seconds is None else describe_age(reading.crl_age_seconds),
        ),
        ("intermediate", _maybe(reading.intermediate_days_left, "expires in {:,.0f} days")),
        ("OCSP", describe_responders(reading)),
    )
    for name, value in rows:
        headline.add_row(name, value)
    for server, figures in sorted(reading.est_servers.items()):
        headline.add_row("EST", describe_est_server(server, figures))

    refusals = Table(title="refusals by code", title_justify="left", expand=False)
    refusals.add_column("code")
    refusals.add_column("jobs", justify="right")
    for code, count in sorted(
        reading.by_label("casign_refused_total", "code").items(), key=lambda item: -item[1]
    ):
        refusals.add_row(code, f"{count:,.0f}")

    steps = Table(title="time per job in each step", title_justify="left", expand=False)
    steps.add_column("step")
    steps.add_column("mean", justify="right")
    means = reading.step_means()
    for step in sorted(means, key=_step_position):
        steps.add_row(step, f"{means[step] * 1e6:,.0f} µs")

    issued = Table(title="issued by profile", title_justify="left", expand=False)
    issued.add_column("profile")
    issued.add_column("certificates", justify="right")
    for profile, count in sorted(reading.by_label("casign_issued_total", "profile").items()):
        issued.add_row(profile, f"{count:,.0f}")
    return Group(f"[bold]{title}[/bold]", headline, issued, refusals, steps)


def describe_responders(reading: Reading) -> str:
    """The OCSP responders in one line: answers held, the oldest, and where answers came from."""
    responders = list(reading.ocsp_responders.values())
    if not responders:
        return "-"
    held = sum(figures.cache_answers for figures in responders)
    ages = [age for figures in responders if (age := figures.cache_age(reading.at)) is not None]
    oldest = f", oldest {describe_age(max(ages))}" if ages else ""
    from_cache = sum(figures.from_cache for figures in responders)
    signed = sum(figures.signed for figures in responders)
    return (
        f"{len(responders)} responder(s), {held:,} answers held{oldest}; "
        f"{from_cache:,} answered from cache, {signed:,} signed"
    )


def describe_est_server(name: str, figures: EstFigures) -> str:
    """One EST server in one line: its answers, enrollments and messages, the top refusals."""
    codes = sorted(figures.refused.items(), key=lambda item: (-item[1], item[0]))
    top = ", ".join(f"{code} {count:,}" for code, count in codes[:TOP_EST_CODES])
    return (
        f"{name}: {figures.answered():,} answered, {figures.pending:,} pending; "
        f"{figures.enrollments_queued:,} enrollments queued in {figures.messages_sent:,} "
        f"message(s); refused {sum(figures.refused.values()):,}" + (f" ({top})" if top else "")
    )


def _step_position(step: str) -> int:
    return STEP_ORDER.index(step) if step in STEP_ORDER else len(STEP_ORDER)


def _maybe(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)
