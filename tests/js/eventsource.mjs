// A real EventSource implementation (the `eventsource` npm package) against collabd's SSE:
// it reconnects by itself after the server drops the stream (here: a server restart),
// sends Last-Event-ID, and the server resumes exactly after it — no snapshot, no gap, no
// duplicate.
import * as Y from 'yjs'
import { EventSource } from 'eventsource'
import { startServer, tempDataDir, until, assertEqual, run } from './harness.mjs'

const ROOM = 'interop/sse'

async function post (port, update) {
  const res = await fetch(`http://127.0.0.1:${port}/rooms/${ROOM}/updates`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: update
  })
  if (res.status !== 200) throw new Error('POST: HTTP ' + res.status + ' ' + await res.text())
  return (await res.json()).seq
}

async function serverText (port) {
  const res = await fetch(`http://127.0.0.1:${port}/rooms/${ROOM}/state`)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
  return doc.getText('t').toString()
}

run('EventSource resumes with Last-Event-ID across a server restart', async () => {
  const dataDir = tempDataDir()
  let server = await startServer(dataDir, '127.0.0.1:0', ['--sse-retry-ms', '100'])
  const port = server.port

  const writer = new Y.Doc()
  const updates = []
  writer.on('update', u => updates.push(u))
  const write = async text => {
    writer.getText('t').insert(writer.getText('t').length, text)
    return post(port, updates.shift())
  }

  const reader = new Y.Doc()
  const snapshots = []
  const ids = []
  let opened = 0
  const es = new EventSource(`http://127.0.0.1:${port}/rooms/${ROOM}/events`)
  es.addEventListener('open', () => { opened++ })
  es.addEventListener('snapshot', e => {
    snapshots.push(Number(e.lastEventId))
    Y.applyUpdate(reader, Buffer.from(e.data, 'base64'))
  })
  es.addEventListener('update', e => {
    ids.push(Number(e.lastEventId))
    Y.applyUpdate(reader, Buffer.from(e.data, 'base64'))
  })

  await until('first open', () => opened === 1)
  for (let i = 0; i < 5; i++) await write(`a${i} `)
  await until('five updates', () => ids.length === 5)

  // The stream drops: the server restarts on the same port.
  await server.stop()
  server = await startServer(dataDir, `127.0.0.1:${port}`, ['--sse-retry-ms', '100'])
  await until('EventSource reconnected by itself', () => opened === 2)
  for (let i = 5; i < 10; i++) await write(`b${i} `)
  await until('ten updates', () => ids.length === 10)

  assertEqual(snapshots, [0], 'only the first connection got a snapshot')
  assertEqual(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'update ids, each exactly once')
  assertEqual(reader.getText('t').toString(), await serverText(port), 'reader equals the server')
  assertEqual(reader.getText('t').toString(), writer.getText('t').toString(), 'reader equals the writer')

  es.close()
  await server.stop()
})
