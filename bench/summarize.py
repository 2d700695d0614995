"""Prints Markdown tables of bench/compare.sh results: one row per scenario and server
(the joiners scenario has its own table)."""
import json
import sys

out, names = sys.argv[1], sys.argv[2:]


def num(value, fmt):
    return "" if value is None else format(value, fmt)


print("| scenario | server | connections | sent | lost | deliveries/s | p50 µs | p99 µs | max µs "
      "| RSS/conn | converged | server CPU % | server CPU µs/delivery | generator CPU % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def results(name, server):
    try:
        return [json.loads(l) for l in open(f"{out}/{name}-{server}.json") if l.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


joins = []
cursors = []
for name in names:
    for server in ("collabd", "reference"):
        lines = results(name, server)
        r = lines[-1].get("search_result", lines[-1]) if lines else None
        if r is None:
            continue
        if r.get("scenario") == "joiners":
            joins.append((name, server, r))
            continue
        if r.get("scenario") == "cursors":
            cursors.append((name, server, r))
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

if joins:
    print()
    print("| scenario | server | document | step 2 bytes | joiners synced | all synced ms | p50 ms "
          "| p90 ms | first ms | one joiner alone ms | server CPU s | server CPU % "
          "| generator CPU % | server RSS after | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, server, r in joins:
        if "error" in r:
            print(f"| {name} | {server} |" + " |" * 12 + f" {r['error']} |")
            continue
        rss = r.get("server_rss_after_bytes")
        print(f"| {name} | {server} | {r['doc_content_bytes'] / 1048576:.0f} MiB in "
              f"{r['doc_updates']} updates | {r['step2_bytes']:,} | "
              f"{r['joiners_ok']}/{r['joiners']} | {r['all_synced_ms']:.0f} | "
              f"{r['joined_ms_p50']:.0f} | {r['joined_ms_p90']:.0f} | {r['joined_ms_min']:.0f} | "
              f"{r['single_join_ms']:.0f} | {num(r.get('server_cpu_seconds'), '.2f')} | "
              f"{num(r.get('server_cpu_percent'), '.1f')} | "
              f"{num(r.get('generator_cpu_percent'), '.1f')} | "
              f"{'' if rss is None else f'{rss / 1048576:.0f} MiB'} | "
              f"{r.get('first_error') or ''} |")

if cursors:
    print()
    print("| scenario | server | rooms × clients (senders) | states sent | frames received "
          "| p50 ms | p99 ms | max ms | last states held | closed | server CPU % "
          "| server CPU µs per (state × receiver) | generator CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, server, r in cursors:
        closed = ", ".join(f"{k}: {v}" for k, v in r["closed"].items()) or "none"
        print(f"| {name} | {server} | {r['rooms']} × {r['clients_per_room']} "
              f"({r['senders_per_room']} at {r['rate_per_sender']:.0f} Hz) | {r['states_sent']:,} | "
              f"{r['frames_received']:,} | {r['latency_us_p50'] / 1000:.1f} | "
              f"{r['latency_us_p99'] / 1000:.1f} | {r['latency_us_max'] / 1000:.1f} | "
              f"{r['final_states_ok']} | {closed} | "
              f"{num(r.get('server_cpu_percent'), '.1f')} | "
              f"{num(r.get('server_cpu_us_per_delivery'), '.2f')} | "
              f"{num(r.get('generator_cpu_percent'), '.1f')} |")
