// The demo at `/` in a real browser (Debian's headless Chromium through playwright-core):
// two pages edit one room and see each other's text, shapes and cursors; a page forced to
// SSE and one forced to polling converge with them; the transport control moves a page
// to another transport; after the server is killed mid-edit and started again, every page
// recovers and nothing typed is lost. A screenshot of the two-page session is written to
// $ARTIFACT_DIR/demo-two-pages.png (not committed).
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { launchChromium } from './browser.mjs'
import { PATIENCE_MS, assertEqual, run, startServer, tempDataDir, until } from './harness.mjs'

const ROOM = 'demo/browser test'

// Draws on the page's whiteboard with `tool` through the points, as a mouse would.
async function draw (page, tool, points) {
  await page.click(`#toolbar [data-tool="${tool}"]`)
  const box = await page.locator('#board').boundingBox()
  const at = ([x, y]) => [box.x + x * box.width / 800, box.y + y * box.height / 520]
  await page.mouse.move(...at(points[0]))
  await page.mouse.down()
  for (const point of points.slice(1)) await page.mouse.move(...at(point), { steps: 4 })
  await page.mouse.up()
}

// Types at the end of the page's editor.
async function type (page, text) {
  await page.click('.cm-content')
  await page.keyboard.press('Control+End')
  await page.keyboard.type(text)
}

// Whether the characters of `phrase` appear in `text` in order: pages typing at the same
// time may interleave their characters (that is what a text CRDT does), never lose or
// reorder one page's own.
function holds (text, phrase) {
  let at = 0
  for (const c of text) if (c === phrase[at]) at++
  return at === phrase.length
}

const view = page => page.evaluate(() => ({
  text: window.demo.doc.getText('text').toString(),
  editor: window.demo.editor.state.doc.toString(),
  shapes: window.demo.doc.getArray('shapes').toJSON().map(s => s.kind),
  status: window.demo.provider.status,
  transport: window.demo.provider.transport,
  badge: document.getElementById('badge').textContent
}))

async function converged (pages, what, expect = () => true) {
  let last = []
  await until(what, async () => {
    last = await Promise.all(pages.map(view))
    const [first] = last
    return last.every(v => v.status === 'connected' && v.text === first.text &&
      v.editor === v.text && JSON.stringify(v.shapes) === JSON.stringify(first.shapes)) &&
      expect(first)
  }).catch(e => {
    throw new Error(`${e.message}: ${JSON.stringify(last, null, 1)}`)
  })
  return last[0]
}

run('the demo: editor, whiteboard and cursors in Chromium on every transport, across a restart', async () => {
  const dataDir = tempDataDir()
  let server = await startServer(dataDir)
  const port = server.port
  const base = `http://127.0.0.1:${port}`
  const browser = await launchChromium()
  const errors = []
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 760 } })
    const open = async (name, transport) => {
      const page = await context.newPage()
      page.setDefaultTimeout(PATIENCE_MS)
      page.on('pageerror', e => errors.push(`${name}: ${e.stack || e}`))
      const query = new URLSearchParams({ room: ROOM, name })
      if (transport) query.set('transport', transport)
      await page.goto(`${base}/?${query}`)
      await page.waitForFunction(() => window.demo && window.demo.provider.synced)
      return page
    }

    // Two pages on WebSocket (the default): text, shapes, cursors.
    const alice = await open('Alice')
    const bob = await open('Bob')
    assertEqual((await view(alice)).transport, 'websocket', 'the default transport')
    await type(alice, 'Hello from Alice. ')
    await type(bob, 'Bob was here.')
    await draw(alice, 'rect', [[80, 80], [260, 200]])
    await draw(bob, 'pen', [[420, 90], [470, 150], [520, 110], [600, 220]])
    await draw(bob, 'ellipse', [[300, 300], [420, 400]])
    const two = await converged([alice, bob], 'two pages share text and shapes',
      v => v.text.includes('Hello from Alice.') && v.text.includes('Bob was here.') && v.shapes.length === 3)
    assertEqual(two.shapes.slice().sort(), ['ellipse', 'rect', 'stroke'], 'the shapes')

    // Cursors and names: Bob's caret in Alice's editor, his pointer on her whiteboard, both
    // in each other's list of people.
    await bob.click('.cm-content')
    const box = await bob.locator('#board').boundingBox()
    await bob.mouse.move(box.x + box.width / 2, box.y + box.height / 2, { steps: 5 })
    await alice.waitForFunction(() => [...document.querySelectorAll('.cm-ySelectionInfo')]
      .some(el => el.textContent === 'Bob'))
    await alice.waitForFunction(() => [...window.demo.awareness.getStates().values()]
      .some(s => s.user?.name === 'Bob' && s.pointer))
    for (const [page, other] of [[alice, 'Bob'], [bob, 'Alice']]) {
      await page.waitForFunction(name => [...document.querySelectorAll('#people li')]
        .some(li => li.textContent.startsWith(name + ' ·')), other)
    }

    // The screenshot of the two-page session: both pages side by side in one picture.
    const shots = await Promise.all([alice, bob].map(p => p.screenshot()))
    const artifacts = process.env.ARTIFACT_DIR || join(dataDir, 'artifacts')
    mkdirSync(artifacts, { recursive: true })
    const sheet = await context.newPage()
    await sheet.setViewportSize({ width: 2580, height: 780 })
    await sheet.setContent('<body style="margin:0;display:flex;gap:20px;background:#888">' +
      shots.map(s => `<img width="1280" src="data:image/png;base64,${s.toString('base64')}">`).join('') +
      '</body>')
    await sheet.screenshot({ path: join(artifacts, 'demo-two-pages.png') })
    await sheet.close()
    console.error(`screenshot: ${join(artifacts, 'demo-two-pages.png')}`)

    // A page forced to SSE and one forced to polling join and edit.
    const carol = await open('Carol', 'sse')
    const dave = await open('Dave', 'polling')
    assertEqual((await view(carol)).transport, 'sse', 'carol forced to SSE')
    assertEqual((await view(dave)).transport, 'polling', 'dave forced to polling')
    if (!(await view(carol)).badge.includes('sse')) throw new Error('the badge names the transport')
    await type(carol, ' Carol on SSE.')
    await converged([carol, dave], 'carol\'s edit reaches dave', v => v.text.includes('Carol on SSE.'))
    await type(dave, ' Dave polling.')
    await draw(dave, 'rect', [[600, 300], [700, 420]])
    const pages = [alice, bob, carol, dave]
    await converged(pages, 'WebSocket, SSE and polling pages converge',
      v => v.text.includes('Carol on SSE.') && v.text.includes('Dave polling.') && v.shapes.length === 4)
    // Presence crosses transports too.
    await dave.waitForFunction(() => [...document.querySelectorAll('#people li')]
      .some(li => li.textContent.startsWith('Carol · sse')))

    // The transport control: Bob moves to polling and back to WebSocket by hand.
    await bob.selectOption('#transport', 'polling')
    await until('bob on polling', async () => (await view(bob)).transport === 'polling' &&
      (await view(bob)).status === 'connected')
    await type(bob, ' Bob polls.')
    await converged(pages, 'an edit over the forced transport', v => v.text.includes('Bob polls.'))
    await bob.selectOption('#transport', 'websocket')
    await until('bob back on WebSocket', async () => (await view(bob)).transport === 'websocket')

    // The server dies mid-edit (SIGKILL while edits are in flight), pages keep editing
    // while it is down, and it comes back on the same address with the same data.
    const beforeKill = (await view(alice)).text
    await Promise.all(pages.map((page, i) => type(page, ` [${i} before]`)))
    await server.kill()
    await until('every page notices', async () =>
      (await Promise.all(pages.map(view))).every(v => v.status !== 'connected'))
    await Promise.all(pages.map((page, i) => type(page, ` [${i} offline]`)))
    server = await startServer(dataDir, `127.0.0.1:${port}`)
    const typed = [0, 1, 2, 3].flatMap(i => [` [${i} before]`, ` [${i} offline]`])
    const after = await converged(pages, 'every page recovers after the restart', v =>
      typed.every(phrase => holds(v.text, phrase)))
    // Nothing lost, nothing doubled.
    assertEqual(after.text.length, beforeKill.length + typed.join('').length, 'the length of the text')
    for (const phrase of ['Hello from Alice.', 'Bob was here.', 'Carol on SSE.', 'Dave polling.', 'Bob polls.']) {
      if (!after.text.includes(phrase)) throw new Error(`lost across the restart: ${phrase}`)
    }
    // The server stored all of it.
    const stored = await (await fetch(`${base}/rooms/${encodeURIComponent(ROOM)}/json`)).json()
    assertEqual(stored.text, after.text, 'the server holds what the pages show')
    assertEqual(errors, [], 'errors in the pages')
  } finally {
    await browser.close()
    await server.stop().catch(() => server.kill())
  }
})
