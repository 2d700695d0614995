// Stock Yjs clients (yjs + y-websocket's WebsocketProvider, no changes) against collabd:
// three clients converge on Y.Text and Y.Map edits, see each other's awareness, survive a
// server restart, and merge the edits they made while the server was down; a room deleted
// under stock clients never gets its content back.
import * as Y from 'yjs'
import { startServer, tempDataDir, until, assertEqual, run, yWebsocketClient } from './harness.mjs'

const ROOM = 'interop/doc-1'

async function client (port, name) {
  const c = await yWebsocketClient(port, ROOM, name)
  return { ...c, text: c.doc.getText('text'), map: c.doc.getMap('map') }
}

// Map keys sorted: Y.Map's key order depends on the order a client learned them.
const sorted = obj => Object.fromEntries(Object.entries(obj).sort(([a], [b]) => a < b ? -1 : 1))
const view = c => ({ text: c.text.toString(), map: sorted(c.map.toJSON()) })
const names = c => [...c.provider.awareness.getStates().values()]
  .map(s => s.user && s.user.name).filter(Boolean).sort()

async function serverState (port) {
  const res = await fetch(`http://127.0.0.1:${port}/rooms/${ROOM}/state`)
  if (res.status !== 200) throw new Error('state: HTTP ' + res.status)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
  return { text: doc.getText('text').toString(), map: sorted(doc.getMap('map').toJSON()) }
}

async function converged (clients, what) {
  await until(what, () => {
    const first = JSON.stringify(view(clients[0]))
    return clients.every(c => JSON.stringify(view(c)) === first)
  })
}

// A room deleted under stock y-websocket clients: each is closed with 4410. A stock
// provider reconnects by itself and offers its whole (deleted) document again; the server
// refuses it each time (4410 again), so nothing deleted comes back. The application's
// part, as the README says: on 4410, destroy the provider and document, start afresh.
async function deletedUnderStockClients (port) {
  const room = 'interop/deleted'
  const base = `http://127.0.0.1:${port}/rooms/${encodeURIComponent(room)}`
  const stale = await Promise.all(['dee', 'eve'].map(n => yWebsocketClient(port, room, n)))
  const closes = stale.map(() => [])
  stale.forEach((c, i) => c.provider.on('connection-close', e => e && closes[i].push(e.code)))
  await until('synced', () => stale.every(c => c.provider.synced))
  stale[0].doc.getText('text').insert(0, 'secret')
  await until('stored', async () => {
    const res = await fetch(`${base}/state`)
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
    return doc.getText('text').toString() === 'secret'
  })
  assertEqual((await fetch(base, { method: 'DELETE' })).status, 200, 'DELETE')
  await until('both closed with 4410, and refused again on reconnecting', () =>
    closes.every(codes => codes.filter(c => c === 4410).length >= 2))
  const res = await fetch(`${base}/state`)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
  assertEqual(doc.getText('text').toString(), '', 'nothing deleted came back')
  stale.forEach(c => { c.provider.destroy(); c.doc.destroy() })
  const fresh = await yWebsocketClient(port, room, 'fresh')
  await until('a fresh document syncs', () => fresh.provider.synced)
  fresh.doc.getText('text').insert(0, 'new life')
  await until('the new life is stored', async () => {
    const res = await fetch(`${base}/state`)
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
    return doc.getText('text').toString() === 'new life'
  })
  fresh.provider.destroy()
}

run('stock Yjs clients interoperate with collabd', async () => {
  const dataDir = tempDataDir()
  let server = await startServer(dataDir)
  const port = server.port
  const clients = await Promise.all(['ann', 'bob', 'cy'].map(n => client(port, n)))
  const [ann, bob, cy] = clients
  await until('all synced', () => clients.every(c => c.provider.synced))

  ann.text.insert(0, 'Hello')
  bob.map.set('title', 'Notes')
  cy.doc.transact(() => {
    cy.text.insert(0, '> ')
    cy.map.set('count', 3)
  })
  await converged(clients, 'first edits converge')
  await until('all edits everywhere', () => view(ann).text.includes('Hello') &&
    view(ann).text.includes('> ') && view(ann).map.count === 3 && view(ann).map.title === 'Notes')
  assertEqual(await serverState(port), view(ann), 'server state equals the clients')

  await until('everyone sees everyone', () =>
    clients.every(c => JSON.stringify(names(c)) === '["ann","bob","cy"]'))

  // Restart: the server goes away, clients keep editing offline, the server comes back on
  // the same port and data dir, and the providers reconnect by themselves.
  await server.stop()
  await until('providers notice', () => clients.every(c => !c.provider.wsconnected))
  ann.text.insert(ann.text.length, ' (ann offline)')
  bob.map.set('offline', 'bob')
  cy.text.insert(0, '[cy] ')
  server = await startServer(dataDir, `127.0.0.1:${port}`)
  await until('providers reconnect', () => clients.every(c => c.provider.wsconnected && c.provider.synced))
  await converged(clients, 'offline edits merge')
  const merged = view(bob)
  if (!merged.text.includes('(ann offline)') || !merged.text.startsWith('[cy] ') ||
      merged.map.offline !== 'bob' || merged.map.title !== 'Notes') {
    throw new Error('merged state lost an edit: ' + JSON.stringify(merged))
  }
  await until('server holds the merge', async () =>
    JSON.stringify(await serverState(port)) === JSON.stringify(merged))
  // y-websocket clients drop remote states when the socket closes and ignore a state
  // re-sent with the same clock, so presence returns with each client's next change
  // (or its 15 s renewal). Move every cursor, as users do.
  clients.forEach((c, i) => c.provider.awareness.setLocalStateField('cursor', i))
  await until('awareness after restart', () =>
    clients.every(c => JSON.stringify(names(c)) === '["ann","bob","cy"]'))

  // One leaves: the others see its presence go.
  cy.provider.destroy()
  await until('cy gone from ann', () => JSON.stringify(names(ann)) === '["ann","bob"]')

  ann.provider.destroy()
  bob.provider.destroy()
  await deletedUnderStockClients(port)
  await server.stop()
  // Everything survives a clean stop.
  server = await startServer(dataDir)
  assertEqual(await serverState(server.port), merged, 'state after the final restart')
  await server.stop()
})
