// Cluster mode with stock clients: y-websocket WebsocketProviders spread over the nodes
// in CLUSTER_URLS (comma-separated http://host:port, started by tests/cluster.rs) edit one
// document together, converge, and see each other's presence across nodes; an
// EventSource (the `eventsource` package) on every URL receives every update with the
// same ids. With NGINX_URL set too, the clients connect through it (round robin, no
// stickiness) and, once KILL_URL's node is killed (the Rust side kills it when this
// script prints KILL), reconnect through nginx and converge with nothing lost.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { until, assertEqual, run } from './harness.mjs'

const urls = process.env.CLUSTER_URLS.split(',')
const entry = process.env.NGINX_URL
const ROOM = 'cluster/js'

function client (base, name) {
  const doc = new Y.Doc()
  const ws = base.replace(/^http/, 'ws') + '/ws'
  const provider = new WebsocketProvider(ws, ROOM, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 300
  })
  provider.awareness.setLocalStateField('user', { name })
  return { name, doc, provider, text: doc.getText('text') }
}

function sse (base) {
  const seen = new Map()
  const source = new EventSource(`${base}/rooms/${ROOM}/events?since=0`)
  source.addEventListener('update', e => seen.set(Number(e.lastEventId), e.data))
  return { source, seen }
}

const names = c => [...c.provider.awareness.getStates().values()]
  .map(s => s.user && s.user.name).filter(Boolean).sort()

run('stock Yjs clients share a room across cluster nodes', async () => {
  const bases = entry ? [entry, entry, entry, entry] : urls
  const clients = bases.map((base, i) => client(base, `c${i}`))
  const streams = (entry ? [entry] : urls).map(sse)
  await until('all synced', () => clients.every(c => c.provider.synced))

  for (let round = 0; round < 5; round++) {
    clients.forEach((c, i) => c.text.insert(c.text.length, `[${c.name}.${round}]`))
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  const converged = () => clients.every(c => c.text.toString() === clients[0].text.toString())
  await until('clients converge', () => converged() &&
    clients.every(c => clients.every(o => c.text.toString().includes(`[${o.name}.4]`))))
  const all = clients.map(c => c.name).sort()
  await until('presence crosses nodes', () =>
    clients.every(c => JSON.stringify(names(c)) === JSON.stringify(all)))

  // Every node's state is the clients' document.
  for (const base of urls) {
    const res = await fetch(`${base}/rooms/${ROOM}/state`)
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
    assertEqual(doc.getText('text').toString(), clients[0].text.toString(), `state at ${base}`)
  }
  const info = await (await fetch(`${urls[0]}/rooms/${ROOM}`)).json()
  await until('every stream has every update', () =>
    streams.every(s => s.seen.size === info.seq))
  const first = JSON.stringify([...streams[0].seen.entries()].sort((a, b) => a[0] - b[0]))
  for (const s of streams) {
    assertEqual(JSON.stringify([...s.seen.entries()].sort((a, b) => a[0] - b[0])), first,
      'the same ids and updates on every stream')
  }

  if (process.env.KILL_URL) {
    // A node dies under edits: its clients reconnect through nginx to the others.
    const typing = setInterval(() => {
      clients.forEach(c => c.text.insert(c.text.length, '.'))
    }, 30)
    for (const c of clients) {
      c.provider.on('status', e => { if (e.status === 'disconnected') c.dropped = true })
    }
    console.log('KILL')
    await until('the node is gone', async () => {
      try { await fetch(`${process.env.KILL_URL}/healthz`); return false } catch { return true }
    })
    await new Promise(resolve => setTimeout(resolve, 300))
    clearInterval(typing)
    // Round robin put some of the clients on the killed node.
    if (!clients.some(c => c.dropped)) throw new Error('no client was on the killed node')
    clients.forEach(c => c.text.insert(c.text.length, `[${c.name}.end]`))
    await until('clients converge after the kill', () => converged() &&
      clients.every(c => clients.every(o => c.text.toString().includes(`[${o.name}.end]`))))
    const res = await fetch(`${entry}/rooms/${ROOM}/state`)
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
    await until('the server holds everything', async () => {
      const r = await fetch(`${entry}/rooms/${ROOM}/state`)
      const d = new Y.Doc()
      Y.applyUpdate(d, new Uint8Array(await r.arrayBuffer()))
      return d.getText('text').toString() === clients[0].text.toString()
    })
  }
  clients.forEach(c => c.provider.destroy())
  streams.forEach(s => s.source.close())
})
