// Stock y-websocket clients with collabd's merged presence (awareness_tick_ms): cursors
// moved as fast as the clients can set them reach everyone with each client's latest
// state, and a client that leaves is removed for everyone.
import { startServer, tempDataDir, until, assertEqual, run, yWebsocketClient } from './harness.mjs'

const ROOM = 'interop/board'

const cursorOf = (c, other) => {
  const state = c.provider.awareness.getStates().get(other.provider.awareness.clientID)
  return state && state.cursor ? state.cursor.x : undefined
}

run('stock clients see merged presence and removals', async () => {
  const server = await startServer(tempDataDir())
  const clients = await Promise.all(['ann', 'bob', 'cy', 'dee'].map(n => yWebsocketClient(server.port, ROOM, n)))
  await until('all synced', () => clients.every(c => c.provider.synced))
  await until('everyone sees everyone', () =>
    clients.every(c => c.provider.awareness.getStates().size === clients.length))

  const MOVES = 300
  for (let x = 0; x < MOVES; x++) {
    for (const c of clients) c.provider.awareness.setLocalStateField('cursor', { x })
    if (x % 50 === 0) await new Promise(resolve => setTimeout(resolve, 5))
  }
  await until('every client sees every final cursor', () =>
    clients.every(c => clients.every(o => cursorOf(c, o) === MOVES - 1)))
  for (const c of clients) {
    for (const o of clients) {
      assertEqual(c.provider.awareness.getStates().get(o.provider.awareness.clientID).user.name,
        o.name, `${c.name} sees ${o.name}'s name`)
    }
  }

  const [ann, ...rest] = clients
  ann.provider.destroy()
  await until('ann is removed for everyone', () =>
    rest.every(c => !c.provider.awareness.getStates().has(ann.provider.awareness.clientID)))
  assertEqual(rest.map(c => c.provider.awareness.getStates().size), [3, 3, 3], 'three left')

  for (const c of rest) c.provider.destroy()
  await server.stop()
})
