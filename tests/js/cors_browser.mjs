// A page on another origin uses collabd's HTTP transports in a real browser (Debian's
// headless Chromium through playwright-core): with its origin in allowed_origins, SSE
// (EventSource), polling and a POST (with its preflight) work; a page on an origin that
// is not listed is blocked by the browser and its write changes nothing.
import { createServer } from 'node:http'
import { launchChromium } from './browser.mjs'
import * as Y from 'yjs'
import { assertEqual, run, startServer, tempDataDir } from './harness.mjs'

// A static page server on its own port: a distinct origin for the browser.
function pageServer () {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end('<!doctype html><title>app</title><p>app</p>')
  })
  return new Promise(resolve => server.listen(0, '127.0.0.1', () => resolve(server)))
}

// Runs in the page: SSE until an update arrives, a poll, and a POST of `update`.
async function useCollabd ({ base, room, update }) {
  const result = {}
  result.sse = await new Promise(resolve => {
    const events = new EventSource(`${base}/rooms/${room}/events?since=0`)
    events.addEventListener('update', e => { events.close(); resolve({ id: e.lastEventId }) })
    events.onerror = () => { events.close(); resolve({ error: true }) }
  })
  try {
    const poll = await fetch(`${base}/rooms/${room}/updates?since=0`)
    result.poll = { status: poll.status, body: await poll.json(), seq: poll.headers.get('x-seq') }
  } catch (e) {
    result.poll = { error: String(e) }
  }
  try {
    const post = await fetch(`${base}/rooms/${room}/updates`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: new Uint8Array(update)
    })
    result.post = { status: post.status, body: await post.json() }
  } catch (e) {
    result.post = { error: String(e) }
  }
  return result
}

run('a page on another origin uses SSE, polling and POST in Chromium', async () => {
  const allowedPage = await pageServer()
  const otherPage = await pageServer()
  const allowedOrigin = `http://127.0.0.1:${allowedPage.address().port}`
  const otherOrigin = `http://127.0.0.1:${otherPage.address().port}`
  const server = await startServer(tempDataDir(), '127.0.0.1:0', ['--allowed-origins', allowedOrigin])
  const base = `http://127.0.0.1:${server.port}`
  const room = 'cors-browser'

  // Something to read: one update written from outside the browser.
  const writer = new Y.Doc()
  writer.getText('t').insert(0, 'hello')
  const first = await fetch(`${base}/rooms/${room}/updates`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: Y.encodeStateAsUpdate(writer)
  })
  assertEqual(first.status, 200, 'the first write')

  const edit = () => {
    const before = Y.encodeStateVector(writer)
    writer.getText('t').insert(0, '!')
    return Array.from(Y.encodeStateAsUpdate(writer, before))
  }
  const browser = await launchChromium()
  try {
    const page = await browser.newPage()
    await page.goto(allowedOrigin + '/')
    const allowed = await page.evaluate(useCollabd, { base, room, update: edit() })
    assertEqual(allowed.sse, { id: '1' }, 'SSE from the allowed origin')
    assertEqual(allowed.poll.status, 200, 'poll from the allowed origin')
    assertEqual(allowed.poll.body.updates.length, 1, 'the poll holds the first write')
    assertEqual(allowed.post, { status: 200, body: { seq: 2 } }, 'POST from the allowed origin')

    const other = await browser.newPage()
    await other.goto(otherOrigin + '/')
    const blocked = await other.evaluate(useCollabd, { base, room, update: edit() })
    assertEqual(blocked.sse, { error: true }, 'SSE from an origin not allowed')
    if (!blocked.poll.error) throw new Error('the browser let a foreign page read: ' + JSON.stringify(blocked.poll))
    if (!blocked.post.error) throw new Error('the browser let a foreign page write: ' + JSON.stringify(blocked.post))
  } finally {
    await browser.close()
  }
  const info = await (await fetch(`${base}/rooms/${room}`)).json()
  assertEqual(info.seq, 2, 'only the allowed page wrote')
  allowedPage.close()
  otherPage.close()
  await server.stop()
})
