// examples/embed.rs — an actix-web app that mounts collabd under /collab — as clients see
// it: the host's own /hello; stock y-websocket clients through the prefix with the tokens
// the example's authenticate hook knows (and a refused one); the room `clock`, written by
// the host's task through a room handle, read over SSE and polling; then kill -9 and a
// restart: every tick the host was told is stored (its seq logged) is still there.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { assertEqual, run, startProcess, tempDataDir, until } from './harness.mjs'

const bin = process.env.EMBED_EXAMPLE_BIN

function client (port, token) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://127.0.0.1:${port}/collab/ws`, 'notes', doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 300,
    params: { token }
  })
  return { doc, provider, text: doc.getText('body') }
}

// The status of a WebSocket handshake that is refused (or 101).
function handshake (url) {
  return new Promise(resolve => {
    const ws = new WebSocket(url)
    ws.on('open', () => { ws.close(); resolve(101) })
    ws.on('unexpected-response', (req, res) => resolve(res.statusCode))
    ws.on('error', () => {})
  })
}

const ticks = text => text.split('\n').filter(Boolean)

run('the embedding example: collabd under /collab in a host app', async () => {
  const dataDir = tempDataDir()
  const env = { PORT: '0', DATA_DIR: dataDir }
  let app = await startProcess(bin, [], env)
  const port = app.port
  const base = `http://127.0.0.1:${port}`

  assertEqual(await (await fetch(`${base}/hello`)).text(), 'hello', 'the host route')

  // Stock clients through the prefix, with the hook's tokens.
  const a = client(port, 'writer-token')
  const b = client(port, 'writer-token')
  await until('writers synced', () => a.provider.synced && b.provider.synced)
  a.text.insert(0, 'from a. ')
  b.text.insert(0, 'from b. ')
  await until('writers converge', () => a.text.toString() === b.text.toString() &&
    a.text.toString().includes('from a.') && a.text.toString().includes('from b.'))
  const reader = client(port, 'reader-token')
  await until('the reader syncs', () => reader.text.toString() === a.text.toString())
  assertEqual(await handshake(`ws://127.0.0.1:${port}/collab/ws/notes?token=nope`), 401, 'a refused token')
  assertEqual(await handshake(`ws://127.0.0.1:${port}/collab/ws/notes`), 401, 'no token')
  const refused = await fetch(`${base}/collab/rooms/notes/json`)
  assertEqual([refused.status, (await refused.json()).error], [401, 'hook_refused'], 'HTTP without token')

  // The host's ticks, over SSE and polling.
  const viewer = new Y.Doc()
  const sse = new EventSource(`${base}/collab/rooms/clock/events?token=reader-token`)
  let lastId = 0
  const apply = e => {
    Y.applyUpdate(viewer, new Uint8Array(Buffer.from(e.data, 'base64')))
    lastId = Number(e.lastEventId)
  }
  sse.addEventListener('snapshot', apply)
  sse.addEventListener('update', apply)
  await until('two ticks over SSE', () => ticks(viewer.getText('ticks').toString()).length >= 2)
  sse.close()
  const poll = await (await fetch(`${base}/collab/rooms/clock/updates?since=0&token=reader-token`)).json()
  if (!(poll.updates && poll.updates.length >= 2)) throw new Error('polling: ' + JSON.stringify(poll))
  if (!(lastId >= 2)) throw new Error('SSE ids are seqs: ' + lastId)

  // kill -9: what the host was told is stored survives.
  const stored = () => app.logs.join('').match(/tick \d+ stored at seq \d+/g) || []
  const before = stored().length
  await until('a tick stored after the reads', () => stored().length > before)
  await app.kill()
  const told = stored().map(line => line.match(/tick (\d+)/)[1])
  for (const c of [a, b, reader]) c.provider.destroy()
  app = await startProcess(bin, [], { ...env, PORT: String(port) })
  const after = await (await fetch(`${base}/collab/rooms/clock/json?token=reader-token`)).json()
  const kept = ticks(after.ticks)
  for (const n of told) {
    if (!kept.includes(`tick ${n}`)) throw new Error(`tick ${n} was stored and is lost: ${after.ticks}`)
  }
  const notes = await (await fetch(`${base}/collab/rooms/notes/json?token=reader-token`)).json()
  if (!notes.body.includes('from a.') || !notes.body.includes('from b.')) {
    throw new Error('notes lost: ' + JSON.stringify(notes))
  }
  await app.stop()
})
