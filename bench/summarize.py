"""Prints a Markdown table of bench/compare.sh results: one row per scenario and server."""
import json
import sys

out, names = sys.argv[1], sys.argv[2:]


def num(value, fmt):
    return "" if value is None else format(value, fmt)


print("| scenario | server | connections | sent | lost | deliveries/s | p50 µs | p99 µs | max µs "
      "| RSS/conn | converged | server CPU % | server CPU µs/delivery | generator CPU % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in names:
    for server in ("collabd", "reference"):
        try:
            lines = [json.loads(l) for l in open(f"{out}/{name}-{server}.json") if l.strip()]
        except FileNotFoundError:
            continue
        r = lines[-1].get("search_result", lines[-1]) if lines else None
        if r is None:
            continue
        search = "search_result" in lines[-1]
        rss = None if search else r.get("server_rss_per_connection_bytes")
        label = name + (f" (best of {len(lines) - 1} rounds, {r['rate_per_writer']:.0f}/s per writer)"
                        if search else "")
        print(f"| {label} | {server} | {r['connections_ok']} | {r['updates_sent']} | "
              f"{r['deliveries_lost']} | {r['deliveries_per_sec']:.0f} | {r['latency_us_p50']} | "
              f"{r['latency_us_p99']} | {r['latency_us_max']} | "
              f"{'' if rss is None else f'{rss / 1024:.1f} KiB'} | "
              f"{r['rooms_converged']}/{r['rooms']} | "
              f"{num(r.get('server_cpu_percent') if r['updates_sent'] else None, '.1f')} | "
              f"{num(r.get('server_cpu_us_per_delivery'), '.1f')} | "
              f"{num(r.get('generator_cpu_percent') if r['updates_sent'] else None, '.1f')} |")
