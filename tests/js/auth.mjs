// Access tokens with stock y-websocket clients: the token goes in `params` (the query
// string, since browsers cannot set WebSocket headers). A write token edits; a read
// token syncs, but its edits are refused with y-protocols' permission-denied message
// (y-websocket reports it through console.warn) and reach nobody; a token that expires
// during the session ends it with close code 4401.
import { execFileSync } from 'node:child_process'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { startServer, tempDataDir, until, assertEqual, run } from './harness.mjs'

const ROOM = 'team/notes'
const SECRET = 'interop-secret-0123456789abcdef'
process.env.COLLABD_AUTH_SECRET = SECRET

function token (...args) {
  return execFileSync(process.env.YJS_INTEROP_SERVER_BIN, ['token', ...args], {
    env: { ...process.env, RUST_LOG: 'error' }
  }).toString().trim()
}

function client (port, tokenValue) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://127.0.0.1:${port}/ws`, ROOM, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 300,
    params: { token: tokenValue }
  })
  return { doc, provider, text: doc.getText('text') }
}

run('stock clients with access tokens', async () => {
  const server = await startServer(tempDataDir())
  const denied = []
  const warn = console.warn
  console.warn = (...args) => { denied.push(args.join(' ')) }

  const writer = client(server.port, token('--room', 'team/*', '--write'))
  const reader = client(server.port, token('--room', ROOM))
  await until('both synced', () => writer.provider.synced && reader.provider.synced)
  writer.text.insert(0, 'from the writer')
  await until('the reader sees the write', () => reader.text.toString() === 'from the writer')

  reader.text.insert(0, 'READER ')
  await until('permission denied', () => denied.some(m => m.includes('read-only access')))
  writer.text.insert(writer.text.length, '!')
  await until('the writer\'s next edit arrives', () => reader.text.toString().endsWith('!'))
  assertEqual(writer.text.toString(), 'from the writer!', 'the reader\'s edit reached nobody')

  const short = client(server.port, token('--room', ROOM, '--write', '--ttl', '4'))
  const codes = []
  short.provider.on('connection-close', event => { if (event) codes.push(event.code) })
  await until('expiry closes the session with 4401', () => codes.includes(4401))
  // An application reacts by fetching a new token (or stopping); without that the
  // provider keeps retrying and is refused (401) before the upgrade.
  short.provider.disconnect()

  console.warn = warn
  for (const c of [writer, reader, short]) c.provider.destroy()
  await server.stop()
})
