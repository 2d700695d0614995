// The demo served at `/`: one room, a collaborative text editor (CodeMirror 6 with
// y-codemirror.next) and a whiteboard side by side, kept in sync by collabd's own
// provider (clients/js), with live cursors and names from awareness, a badge with the
// transport, seq and connection state, and a control that forces a transport.
//
// URL parameters: `room` (default `demo`), `name`, `transport` (auto | websocket | sse |
// polling). `window.demo` exposes the document and the provider to tests.
import * as Y from 'yjs'
import { EditorView, basicSetup } from 'codemirror'
import { keymap } from '@codemirror/view'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { Awareness } from 'y-protocols/awareness'
import { CollabdProvider } from '../../clients/js/src/provider.js'
import { Whiteboard } from './whiteboard.js'

const COLORS = [
  ['#30bced', '#30bced33'], ['#6eeb83', '#6eeb8333'], ['#e0a000', '#e0a00033'],
  ['#ee6352', '#ee635233'], ['#9ac2c9', '#9ac2c933'], ['#8acb88', '#8acb8833'],
  ['#1be7ff', '#1be7ff33'], ['#b56be0', '#b56be033']
]
const NAMES = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Radia', 'Ken', 'Frances', 'Tony']
const TRANSPORTS = {
  auto: ['websocket', 'sse', 'polling'],
  websocket: ['websocket'],
  sse: ['sse'],
  polling: ['polling']
}

const $ = id => document.getElementById(id)
// Where collabd is mounted: the page is served at its root (`/`, or `/collab/` inside a
// host app), so every endpoint is relative to the page.
const serverUrl = new URL('.', location.href).href.replace(/\/$/, '')
const params = new URLSearchParams(location.search)
const room = params.get('room') || 'demo'
const pick = list => list[Math.floor(Math.random() * list.length)]
let transport = TRANSPORTS[params.get('transport')] ? params.get('transport') : 'auto'

const doc = new Y.Doc()
const awareness = new Awareness(doc)
const [color, colorLight] = pick(COLORS)
awareness.setLocalStateField('user', { name: params.get('name') || pick(NAMES), color, colorLight })

let provider = null
function connect () {
  provider = new CollabdProvider(serverUrl, room, doc, {
    awareness,
    transports: TRANSPORTS[transport],
    // A demo should come back quickly after a server restart.
    backoff: { minMs: 100, maxMs: 3000 },
    probeIntervalMs: 10000
  })
  provider.on('status', showStatus)
  provider.on('sync', showStatus)
  awareness.setLocalStateField('transport', provider.transport)
}

// Forcing a transport replaces the provider; the document and presence stay. The new
// provider brings the server whatever it lacks (sync step 1/2, or a full-state POST).
function useTransport (value) {
  transport = value
  const state = awareness.getLocalState()
  provider.destroy() // also removes this client's presence
  awareness.setLocalState(state)
  const url = new URL(location.href)
  url.searchParams.set('transport', value)
  history.replaceState(null, '', url)
  connect()
  showStatus()
}

function showStatus () {
  const badge = $('badge')
  const p = provider
  badge.dataset.status = p.status
  badge.textContent = `${p.status} · ${p.transport || '—'} · seq ${p.seq}${p.synced ? ' · synced' : ''}`
  if (awareness.getLocalState()?.transport !== p.transport) {
    awareness.setLocalStateField('transport', p.transport)
  }
}

function showPeople () {
  const list = $('people')
  list.replaceChildren()
  for (const [id, state] of awareness.getStates()) {
    if (!state.user) continue
    const item = document.createElement('li')
    item.style.background = state.user.color
    item.dataset.client = String(id)
    item.textContent = `${state.user.name}${id === doc.clientID ? ' (you)' : ''}` +
      (state.transport ? ` · ${state.transport}` : '')
    list.append(item)
  }
}

// Header controls.
$('room').value = room
$('room-form').addEventListener('submit', e => {
  e.preventDefault()
  const url = new URL(location.href)
  url.searchParams.set('room', $('room').value.trim() || 'demo')
  location.href = url.toString()
})
$('name').value = awareness.getLocalState().user.name
$('name').addEventListener('input', () => {
  const user = { ...awareness.getLocalState().user, name: $('name').value || 'anonymous' }
  awareness.setLocalStateField('user', user)
})
$('transport').value = transport
$('transport').addEventListener('change', e => useTransport(e.target.value))
$('ws-url').textContent = `${serverUrl.replace(/^http/, 'ws')}/ws`
fetch('healthz').then(r => r.json()).then(h => { $('health').textContent = `Server: ${h.status}.` },
  () => { $('health').textContent = 'Server unreachable.' })

// The text editor.
const ytext = doc.getText('text')
const undoManager = new Y.UndoManager(ytext)
const editor = new EditorView({
  doc: ytext.toString(),
  extensions: [
    keymap.of(yUndoManagerKeymap),
    basicSetup,
    EditorView.lineWrapping,
    yCollab(ytext, awareness, { undoManager })
  ],
  parent: $('editor')
})

// The whiteboard.
const board = new Whiteboard($('board'), doc, awareness)
$('color').value = board.color
$('color').addEventListener('input', e => { board.color = e.target.value })
for (const button of document.querySelectorAll('#toolbar [data-tool]')) {
  button.addEventListener('click', () => {
    board.tool = button.dataset.tool
    for (const b of document.querySelectorAll('#toolbar [data-tool]')) b.classList.toggle('active', b === button)
  })
}
$('clear').addEventListener('click', () => board.clear())

awareness.on('change', showPeople)
connect()
showStatus()
showPeople()
// The seq moves without a status change; the badge follows it.
setInterval(showStatus, 250)
window.addEventListener('beforeunload', () => provider.destroy())

window.demo = { doc, awareness, editor, board, get provider () { return provider }, useTransport }
