"""Turn case results into ratios, a Markdown table and a JSON document."""

from dataclasses import dataclass

from harness.cpuload import DISTURBED_CORES
from harness.workloads import Calibration, CaseResult, Workload


@dataclass
class Row:
    """One table row; the `reference` text names how `ratio` was computed."""

    workload: str
    server: str
    result: str
    ratio: str = ""
    reference: str = ""


def _subject_name(subject: CaseResult) -> str:
    return "workgate (stand-in)" if subject.stand_in else "workgate"


def _result_text(case: CaseResult, kind: str) -> str:
    if not case.ok:
        first_line = (case.error or "no runs").splitlines()[0]
        return f"error: {first_line[:80]}"

    rate = case.median("requests_per_sec")
    text = f"{rate:,.0f} req/s"
    if kind == "latency":
        p50 = case.median("p50_us")
        p99 = case.median("p99_us")
        text = f"p50 {p50:,.0f} µs, p99 {p99:,.0f} µs ({text})"
    if case.failed_responses:
        text += f" [{case.failed_responses} failed]"
    other = max(case.other_cores, default=0.0)
    if other >= DISTURBED_CORES:
        text += f" [other load {other:.1f} cores]"
    return text


def compare(
    workload: Workload, cases: list[CaseResult], calibration: Calibration | None
) -> tuple[list[Row], list[dict]]:
    """Return the table rows of one workload and its ratios as plain data."""
    by_server = {case.server: case for case in cases}
    subject = by_server.get("workgate")
    subject_ok = subject is not None and subject.ok
    rows = []
    ratios = []

    for case in cases:
        row = Row(
            workload=f"{workload.number} {workload.key}",
            server=case.label,
            result=_result_text(case, workload.kind),
        )
        rows.append(row)
        if not case.ok:
            continue

        if workload.kind == "cpu" and (case.core_limit_rps or calibration is not None):
            if case.core_limit_rps:
                limit = case.core_limit_rps
                fraction = case.median_core_fraction
                row.reference = f"of cores' limit (mean {limit:,.0f} req/s, between runs)"
            else:
                # Only for results without measured limits (older JSON files).
                limit = calibration.core_limit_rps
                fraction = case.median("requests_per_sec") / limit
                row.reference = f"of cores' limit ({limit:,.0f} req/s)"
            row.ratio = f"{fraction:.2f}"
            ratios.append(
                {
                    "server": case.server,
                    "name": "fraction_of_core_limit",
                    "value": fraction,
                }
            )
            continue

        if case.server == "workgate":
            continue
        name = _subject_name(subject) if subject is not None else "workgate"
        if not subject_ok:
            row.ratio = "n/a"
            row.reference = f"{name} did not run"
            continue

        if workload.kind == "throughput":
            value = subject.median("requests_per_sec") / case.median("requests_per_sec")
            row.ratio = f"{value:.2f}x"
            row.reference = f"{name} / {case.server}"
            ratios.append(
                {
                    "server": case.server,
                    "name": f"workgate / {case.server}",
                    "value": value,
                }
            )
        elif workload.kind == "latency":
            added_p50 = subject.median("p50_us") - case.median("p50_us")
            added_p99 = subject.median("p99_us") - case.median("p99_us")
            row.ratio = f"{added_p50:+,.0f} µs p50, {added_p99:+,.0f} µs p99"
            row.reference = f"{name} − {case.server}"
            ratios.append({"server": case.server, "name": "added_p50_us", "value": added_p50})
            ratios.append({"server": case.server, "name": "added_p99_us", "value": added_p99})
    return rows, ratios


def markdown_table(rows: list[Row]) -> str:
    """Format rows as a Markdown table with aligned columns."""
    header = ("workload", "server", "result (median)", "ratio", "reference")
    cells = [header] + [
        (row.workload, row.server, row.result, row.ratio, row.reference) for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]

    def format_line(line: tuple[str, ...]) -> str:
        padded = (text.ljust(width) for text, width in zip(line, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    lines = [format_line(header), separator]
    lines += [format_line(line) for line in cells[1:]]
    return "\n".join(lines)
