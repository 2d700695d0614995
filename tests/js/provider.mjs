// collabd's own JS provider (clients/js) against the real server: every transport forced,
// the fallback WebSocket → SSE → polling when the one above fails, the way back up when
// WebSocket returns, edits across a server restart on every transport, a silent SSE
// stream noticed by its heartbeat timeout, the backoff, and tokens renewed on expiry.
import { execFileSync } from 'node:child_process'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { CollabdProvider, backoffDelay } from '../../clients/js/src/provider.js'
import { startServer, tempDataDir, until, assertEqual, run } from './harness.mjs'

const ROOM = 'provider/room'

// A WebSocket that fails to connect while `blocked.ws` is set (a proxy that refuses the
// upgrade); an EventSource likewise with `blocked.sse`.
const blocked = { ws: false, sse: false }
class FlakyWebSocket extends WebSocket {
  constructor (url, ...rest) {
    super(blocked.ws ? url.replace(/:\d+\//, ':9/') : url, ...rest)
  }
}
class FlakyEventSource extends EventSource {
  constructor (url, ...rest) {
    super(blocked.sse ? url.replace(/:\d+\//, ':9/') : url, ...rest)
  }
}

function provider (port, name, opts = {}) {
  const doc = new Y.Doc()
  const p = new CollabdProvider(`http://127.0.0.1:${port}`, ROOM, doc, {
    WebSocketPolyfill: FlakyWebSocket,
    EventSourcePolyfill: FlakyEventSource,
    backoff: { minMs: 20, maxMs: 200 },
    probeIntervalMs: 300,
    pollWaitS: 2,
    ...opts
  })
  p.awareness.setLocalStateField('user', { name })
  return { name, doc, p, text: doc.getText('t') }
}

const sees = (a, b) => a.p.awareness.getStates().get(b.doc.clientID)?.user?.name === b.name

async function serverText (port) {
  const res = await fetch(`http://127.0.0.1:${port}/rooms/${encodeURIComponent(ROOM)}/state`)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
  return doc.getText('t').toString()
}

async function backoffIsBounded () {
  for (let attempt = 0; attempt < 20; attempt++) {
    const cap = Math.min(1000, 10 * 2 ** attempt)
    assertEqual(backoffDelay(attempt, { minMs: 10, maxMs: 1000 }, () => 0), 0, 'lowest')
    const high = backoffDelay(attempt, { minMs: 10, maxMs: 1000 }, () => 0.999999)
    assertEqual(high < cap && high >= cap - 1, true, `attempt ${attempt}: ${high} < ${cap}`)
  }
}

async function everyTransportForced () {
  const dataDir = tempDataDir()
  let server = await startServer(dataDir)
  const port = server.port
  const clients = [
    provider(port, 'ws', { transports: ['websocket'] }),
    provider(port, 'sse', { transports: ['sse'] }),
    provider(port, 'poll', { transports: ['polling'] })
  ]
  await until('all synced', () => clients.every(c => c.p.synced))
  assertEqual(clients.map(c => c.p.transport), ['websocket', 'sse', 'polling'], 'transports')
  clients.forEach((c, i) => c.text.insert(0, `${c.name}${i} `))
  await until('converged', () => clients.every(c => c.text.length === clients[0].text.length &&
    ['ws0', 'sse1', 'poll2'].every(w => c.text.toString().includes(w))))
  await until('everyone sees everyone', () => clients.every(a => clients.every(b => sees(a, b))))

  // The server restarts under edits: nothing is lost on any transport.
  await server.stop()
  clients.forEach(c => c.text.insert(c.text.length, ` offline-${c.name}`))
  server = await startServer(dataDir, `127.0.0.1:${port}`)
  await until('converged after the restart', () => clients.every(c =>
    ['offline-ws', 'offline-sse', 'offline-poll'].every(w => c.text.toString().includes(w)) &&
    c.text.toString() === clients[0].text.toString()))
  await until('the server holds it all', async () =>
    (await serverText(port)) === clients[0].text.toString())
  clients.forEach(c => c.p.destroy())
  await server.stop()
}

async function fallbackAndBack () {
  const server = await startServer(tempDataDir())
  const port = server.port
  const reference = provider(port, 'ref', { transports: ['websocket'] })
  blocked.ws = true
  const onSse = provider(port, 'on-sse')
  await until('falls back to SSE', () => onSse.p.transport === 'sse' && onSse.p.synced)
  blocked.sse = true
  const onPoll = provider(port, 'on-poll')
  await until('falls back to polling', () => onPoll.p.transport === 'polling' && onPoll.p.synced)
  onSse.text.insert(0, 'a')
  onPoll.text.insert(0, 'b')
  reference.text.insert(0, 'c')
  const all = [reference, onSse, onPoll]
  await until('converged across transports', () => all.every(c => c.text.length === 3 &&
    c.text.toString() === reference.text.toString()))
  await until('presence across transports', () => all.every(a => all.every(b => sees(a, b))))

  blocked.ws = false
  blocked.sse = false
  await until('back on WebSocket', () =>
    onSse.p.transport === 'websocket' && onPoll.p.transport === 'websocket' &&
    onSse.p.synced && onPoll.p.synced)
  onPoll.text.insert(0, 'd')
  await until('still converging', () => all.every(c => c.text.toString().includes('d')))
  all.forEach(c => c.p.destroy())
  await server.stop()
}

// A stream that goes silent (the server frozen: no heartbeat `ping`) is noticed by the
// provider's SSE timeout, which reconnects once the server answers again.
async function silentSseIsNoticed () {
  const server = await startServer(tempDataDir(), '127.0.0.1:0', ['--sse-heartbeat-ms', '100'])
  const c = provider(server.port, 'sse-hb', { transports: ['sse'], sseTimeoutMs: 800 })
  await until('synced', () => c.p.synced)
  let lost = false
  c.p.on('status', ({ status }) => { if (status === 'disconnected') lost = true })
  process.kill(server.pid, 'SIGSTOP')
  try {
    await until('the silent stream is noticed', () => lost)
  } finally {
    process.kill(server.pid, 'SIGCONT')
  }
  await until('reconnected', () => c.p.status === 'connected' && c.p.synced)
  c.p.destroy()
  await server.stop()
}

// Tokens that expire during the session: the server ends the connection (close code 4401,
// the end of the SSE stream, 401 on a poll), the provider asks `getToken()` for a new
// one and carries on where it was, on every transport; nothing edited is lost.
async function tokensAreRenewed () {
  const secret = 'provider-test-secret-0123456789abcdef'
  const room = 'provider/tokens'
  const token = ttl => execFileSync(process.env.YJS_INTEROP_SERVER_BIN,
    ['token', '--room', room, '--write', '--ttl', String(ttl)],
    { env: { ...process.env, COLLABD_AUTH_SECRET: secret, RUST_LOG: 'error' } }).toString().trim()
  process.env.COLLABD_AUTH_SECRET = secret
  const server = await startServer(tempDataDir()).finally(() => delete process.env.COLLABD_AUTH_SECRET)
  const base = `http://127.0.0.1:${server.port}`
  const clients = ['websocket', 'sse', 'polling'].map(kind => {
    const doc = new Y.Doc()
    const c = { kind, doc, text: doc.getText('t'), renewed: 0 }
    c.p = new CollabdProvider(base, room, doc, {
      WebSocketPolyfill: WebSocket,
      EventSourcePolyfill: EventSource,
      transports: [kind],
      backoff: { minMs: 20, maxMs: 200 },
      pollWaitS: 1,
      // Short-lived at first; every renewed token lasts an hour.
      params: { token: token(2) },
      getToken: async () => { c.renewed++; return token(3600) }
    })
    return c
  })
  await until('all synced with short tokens', () => clients.every(c => c.p.synced))
  clients.forEach(c => c.text.insert(c.text.length, `[${c.kind} before]`))
  await until('every token renewed', () => clients.every(c => c.renewed >= 1))
  await until('all back', () => clients.every(c => c.p.status === 'connected' && c.p.synced)).catch(e => { throw new Error(e.message + JSON.stringify(clients.map(c => [c.kind, c.p.status, c.p.synced, c.p.transport, c.renewed]))) })
  assertEqual(clients.map(c => c.p.transport), ['websocket', 'sse', 'polling'], 'no fallback on expiry')
  clients.forEach(c => c.text.insert(c.text.length, `[${c.kind} after]`))
  const want = clients.flatMap(c => [`[${c.kind} before]`, `[${c.kind} after]`])
  await until('the server has every edit', async () => {
    const res = await fetch(`${base}/rooms/${encodeURIComponent(room)}/state?token=${token(60)}`)
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
    return want.every(w => doc.getText('t').toString().includes(w))
  })
  await until('converged', () => clients.every(c => want.every(w => c.text.toString().includes(w))))
  clients.forEach(c => c.p.destroy())
  await server.stop()
}

// The room is deleted under a provider on each transport: each stops and says so, and
// none brings the deleted content back; providers on fresh documents work in the room's
// new life.
async function deletionIsNoticed () {
  const server = await startServer(tempDataDir())
  const base = `http://127.0.0.1:${server.port}`
  const room = 'provider/deleted'
  const make = kind => {
    const doc = new Y.Doc()
    const c = { kind, doc, text: doc.getText('t'), deleted: null }
    c.p = new CollabdProvider(base, room, doc, {
      WebSocketPolyfill: WebSocket,
      EventSourcePolyfill: EventSource,
      transports: [kind],
      backoff: { minMs: 20, maxMs: 200 },
      pollWaitS: 1
    })
    c.p.on('deleted', info => { c.deleted = info })
    return c
  }
  const clients = ['websocket', 'sse', 'polling'].map(make)
  await until('all synced', () => clients.every(c => c.p.synced))
  clients.forEach(c => c.text.insert(0, `[old ${c.kind}]`))
  await until('the old content is stored', async () => {
    const res = await fetch(`${base}/rooms/${encodeURIComponent(room)}/state`)
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
    return clients.every(c => doc.getText('t').toString().includes(`[old ${c.kind}]`))
  })
  const res = await fetch(`${base}/rooms/${encodeURIComponent(room)}`, { method: 'DELETE' })
  assertEqual(res.status, 200, 'DELETE')
  await until('every provider noticed', () => clients.every(c => c.deleted !== null))
  assertEqual(clients.map(c => c.deleted.transport), ['websocket', 'sse', 'polling'], 'how')
  assertEqual(clients.map(c => c.p.status), ['disconnected', 'disconnected', 'disconnected'], 'stopped')
  // Edits to the old documents go nowhere; fresh providers start the new life.
  clients.forEach(c => c.text.insert(0, 'late '))
  const fresh = ['websocket', 'sse', 'polling'].map(make)
  await until('fresh providers synced', () => fresh.every(c => c.p.synced))
  fresh[0].text.insert(0, 'new life')
  await until('the new life converges', () => fresh.every(c => c.text.toString() === 'new life'))
  const state = await fetch(`${base}/rooms/${encodeURIComponent(room)}/state`)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, new Uint8Array(await state.arrayBuffer()))
  assertEqual(doc.getText('t').toString(), 'new life', 'nothing deleted came back')
  clients.concat(fresh).forEach(c => c.p.destroy())
  await server.stop()
}

run('the JS provider: backoff, every transport, restarts, fallback and back', async () => {
  await deletionIsNoticed()
  await backoffIsBounded()
  await silentSseIsNoticed()
  await everyTransportForced()
  await fallbackAndBack()
  await tokensAreRenewed()
})
