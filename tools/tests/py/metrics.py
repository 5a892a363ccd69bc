"""The node's /metrics as a Prometheus user sees it, and the Grafana dashboard plotted from it.

Usage: metrics.py HOST ADMIN SMTP POP3 IMAP USER PASSWORD DASHBOARD PNG

While mail is delivered (SMTP), read (POP3, IMAP) and refused, /metrics is scraped every half
second and parsed by the Prometheus project's own OpenMetrics parser (strict: a malformed
document, a counter without _total, a histogram without +Inf fail it); the figures must have
the types a Prometheus user expects. Then every panel of the dashboard has its PromQL queries
evaluated over those scrapes (rate, sum, sum by, histogram_quantile: what the dashboard uses)
and drawn with matplotlib to PNG, one plot per panel, as Grafana would show them: a query that
names a metric the node does not export, or finds no data, fails the check. Prints
`metrics ok PANELS`.
"""

import imaplib
import json
import math
import poplib
import re
import smtplib
import sys
import threading
import time
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fail(why):
    print("FAILED:", why)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def scrape(host, admin):
    with urllib.request.urlopen(f"http://{host}:{admin}/metrics", timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode()
    check(content_type.startswith("application/openmetrics-text"), f"content type {content_type}")
    families = {}
    samples = {}
    try:
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
    except ValueError as e:
        fail(f"/metrics is not valid OpenMetrics: {e}\n{text}")
    return families, samples


def load(host, smtp, pop3, imap, user, password, stop):
    message = b"Subject: metrics\r\nFrom: m@example.org\r\n\r\nbody\r\n"
    while not stop.is_set():
        with smtplib.SMTP(host, int(smtp), timeout=30) as s:
            for _ in range(20):
                s.sendmail("m@example.org", [user], message)
            try:
                s.sendmail("m@example.org", ["nobody-here@localhost"], message)
            except smtplib.SMTPRecipientsRefused:
                pass
        p = poplib.POP3(host, int(pop3), timeout=30)
        p.user(user)
        p.pass_(password)
        p.stat()
        p.quit()
        m = imaplib.IMAP4(host, int(imap))
        m.login(user, password)
        m.select("INBOX")
        try:
            m.select("No-Such-Folder")
        except imaplib.IMAP4.error:
            pass
        m.logout()


# ---- A PromQL subset: what the dashboard uses, evaluated over scrapes ----

TOKEN = re.compile(r'\s*(\d+\.\d+|\d+|[A-Za-z_:][A-Za-z0-9_:]*|"(?:[^"\\]|\\.)*"|=~|!=|[(){}\[\],=])')


def tokenize(text):
    tokens, at = [], 0
    while at < len(text):
        m = TOKEN.match(text, at)
        if not m:
            if text[at:].strip() == "":
                break
            fail(f"cannot read the query at {text[at:]!r}")
        tokens.append(m.group(1))
        at = m.end()
    return tokens


class Parser:
    def __init__(self, text):
        self.tokens, self.at = tokenize(text), 0

    def peek(self):
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, want=None):
        token = self.peek()
        check(token is not None and (want is None or token == want), f"expected {want}, got {token}")
        self.at += 1
        return token

    def expr(self):
        name = self.take()
        if name == "rate":
            self.take("(")
            inner = self.selector(self.take())
            self.take("[")
            self.take()
            self.take()  # the window's unit: rates are taken between scrapes
            self.take("]")
            self.take(")")
            return ("rate", inner)
        if name == "histogram_quantile":
            self.take("(")
            q = float(self.take())
            self.take(",")
            inner = self.expr()
            self.take(")")
            return ("quantile", q, inner)
        if name == "sum":
            by = None
            if self.peek() == "by":
                self.take()
                self.take("(")
                by = []
                while self.peek() != ")":
                    by.append(self.take())
                    if self.peek() == ",":
                        self.take()
                self.take(")")
            self.take("(")
            inner = self.expr()
            self.take(")")
            return ("sum", by, inner)
        return self.selector(name)

    def selector(self, name):
        matchers = []
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                label = self.take()
                op = self.take()
                value = json.loads(self.take())
                matchers.append((label, op, value))
                if self.peek() == ",":
                    self.take()
            self.take("}")
        return ("select", name, matchers)


def matches(labels, matchers):
    for label, op, value in matchers:
        have = labels.get(label, "")
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "=~" and not re.fullmatch(value, have):
            return False
    return True


def evaluate(node, scrapes, i):
    """{labels (frozenset): value} of `node` at scrape i (rates need i >= 1)."""
    kind = node[0]
    if kind == "select":
        _, name, matchers = node
        out = {}
        for (sample, labels), value in scrapes[i][1].items():
            if sample == name and matches(dict(labels), matchers):
                out[labels] = value
        return out
    if kind == "rate":
        now, before = evaluate(node[1], scrapes, i), evaluate(node[1], scrapes, i - 1)
        dt = scrapes[i][0] - scrapes[i - 1][0]
        return {k: max(0.0, v - before[k]) / dt for k, v in now.items() if k in before}
    if kind == "sum":
        _, by, inner = node
        out = {}
        for labels, value in evaluate(inner, scrapes, i).items():
            key = frozenset((k, v) for k, v in labels if by is not None and k in by)
            out[key] = out.get(key, 0.0) + value
        return out
    if kind == "quantile":
        _, q, inner = node
        groups = {}
        for labels, value in evaluate(inner, scrapes, i).items():
            d = dict(labels)
            le = d.pop("le")
            groups.setdefault(frozenset(d.items()), []).append((math.inf if le == "+Inf" else float(le), value))
        out = {}
        for key, buckets in groups.items():
            buckets.sort()
            total = buckets[-1][1]
            if total <= 0:
                out[key] = math.nan
                continue
            rank, lower, below = q * total, 0.0, 0.0
            for upper, count in buckets:
                if count >= rank:
                    out[key] = lower if upper == math.inf else lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
                    break
                lower, below = upper, count
        return out
    fail(f"unknown node {node}")


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: dict(labels).get(m.group(1), ""), fmt) or "value"


def main(host, admin, smtp, pop3, imap, user, password, dashboard_path, png):
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(host, smtp, pop3, imap, user, password, stop))
    worker.start()
    scrapes = []
    try:
        for _ in range(9):
            started = time.monotonic()
            families, samples = scrape(host, admin)
            scrapes.append((started, samples))
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    # What a Prometheus user relies on: counters are counters, latencies histograms.
    want = {
        "porcupine_deliveries": "counter",
        "porcupine_smtp_replies": "counter",
        "porcupine_sessions": "counter",
        "porcupine_errors": "counter",
        "porcupine_shard_appended_bytes": "counter",
        "porcupine_shard_fsyncs": "counter",
        "porcupine_shard_ack_seconds": "histogram",
        "porcupine_shard_fsync_seconds": "histogram",
        "porcupine_shard_poisoned": "gauge",
        "porcupine_shard_load": "gauge",
        "porcupine_members": "gauge",
    }
    for name, kind in want.items():
        check(families.get(name) == kind, f"{name} is {families.get(name)}, not a {kind}")
    last = scrapes[-1][1]
    for protocol in ("smtp", "lmtp", "pop3", "imap"):
        check((("porcupine_sessions_total", frozenset({("protocol", protocol)}))) in last, f"no sessions of {protocol}")
    check(last[("porcupine_errors_total", frozenset({("protocol", "imap")}))] >= 1, "IMAP errors not counted")

    with open(dashboard_path) as f:
        dashboard = json.load(f)
    panels = dashboard["panels"]
    check(panels and all(p.get("targets") for p in panels), "a panel without queries")
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    figure.suptitle(dashboard["title"])
    t0 = scrapes[0][0]
    for index, panel in enumerate(panels):
        ax = axes[index // columns][index % columns]
        ax.set_title(panel["title"], fontsize=9)
        plotted = 0
        for target in panel["targets"]:
            expr = target["expr"].replace("$instance", ".*")
            tree = Parser(expr).expr()
            series = {}
            for i in range(1, len(scrapes)):
                for labels, value in evaluate(tree, scrapes, i).items():
                    series.setdefault(labels, []).append((scrapes[i][0] - t0, value))
            check(series, f"panel {panel['title']!r}: {target['expr']} finds no data")
            for labels, points in sorted(series.items(), key=lambda kv: sorted(kv[0])):
                finite = [(t, v) for t, v in points if not math.isnan(v)]
                if finite:
                    ax.plot([t for t, _ in finite], [v for _, v in finite], label=legend(target.get("legendFormat", ""), labels))
                    plotted += 1
        check(plotted, f"panel {panel['title']!r} has nothing to draw")
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.tight_layout()
    figure.savefig(png, dpi=80)
    with open(png, "rb") as f:
        head = f.read(8)
    check(head == b"\x89PNG\r\n\x1a\n", "not a PNG")
    # Mail flowed while the dashboard watched: deliveries and an ack latency are on it.
    deliveries = Parser('sum(rate(porcupine_deliveries_total[1m]))').expr()
    rates = [v for i in range(1, len(scrapes)) for v in evaluate(deliveries, scrapes, i).values()]
    check(max(rates) > 0, f"no deliveries seen: {rates}")
    p99 = Parser('histogram_quantile(0.99, sum by (le) (rate(porcupine_shard_ack_seconds_bucket[1m])))').expr()
    latencies = [v for i in range(1, len(scrapes)) for v in evaluate(p99, scrapes, i).values() if not math.isnan(v)]
    check(latencies and 0 < max(latencies) < 10, f"ack p99 {latencies}")
    print(f"metrics ok {len(panels)} panels, deliveries up to {max(rates):.0f}/s, ack p99 up to {max(latencies) * 1000:.1f} ms, {png}")


if __name__ == "__main__":
    main(*sys.argv[1:])
