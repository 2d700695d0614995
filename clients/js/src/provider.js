// CollabdProvider: a Yjs provider for collabd that keeps a document in sync over the best
// transport the network allows — WebSocket (y-websocket protocol), else Server-Sent Events
// for reads + HTTP POST for writes, else long polling — and moves back up when WebSocket
// works again. See ../README.md.
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { Observable } from 'lib0/observable'

const MSG_SYNC = 0
const MSG_AWARENESS = 1
const MSG_AUTH = 2
const MSG_QUERY_AWARENESS = 3
const MSG_ACK = 100

/** Exponential backoff with full jitter: a delay in [0, min(maxMs, minMs · 2^attempt)). */
export function backoffDelay (attempt, { minMs, maxMs }, random = Math.random) {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30))
  return Math.floor(random() * cap)
}

const fromBase64 = text => {
  if (typeof Buffer !== 'undefined') return new Uint8Array(Buffer.from(text, 'base64'))
  return Uint8Array.from(atob(text), c => c.charCodeAt(0))
}

function randomToken () {
  const bytes = new Uint8Array(16)
  globalThis.crypto.getRandomValues(bytes)
  return Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('')
}

/** Seconds of a Retry-After header, in ms (null if absent or unreadable). */
function retryAfterMs (res) {
  const value = res && res.headers && res.headers.get('retry-after')
  const seconds = value == null ? NaN : Number(value)
  return Number.isFinite(seconds) ? seconds * 1000 : null
}

export class CollabdProvider extends Observable {
  /**
   * @param {string} serverUrl the server's base URL, `http://host:port`
   * @param {string} room
   * @param {Y.Doc} doc
   * @param {object} [opts] see README
   */
  constructor (serverUrl, room, doc, opts = {}) {
    super()
    this.serverUrl = serverUrl.replace(/\/+$/, '')
    this.room = room
    this.doc = doc
    this.awareness = opts.awareness || new awarenessProtocol.Awareness(doc)
    this.transports = opts.transports || ['websocket', 'sse', 'polling']
    this.backoff = { minMs: 100, maxMs: 10000, ...(opts.backoff || {}) }
    this.probeIntervalMs = opts.probeIntervalMs ?? 30000
    this.messageTimeoutMs = opts.messageTimeoutMs ?? 30000
    this.sseTimeoutMs = opts.sseTimeoutMs ?? 35000
    this.pollWaitS = opts.pollWaitS ?? 25
    this.failuresBeforeFallback = opts.failuresBeforeFallback ?? 2
    this.WebSocket = opts.WebSocketPolyfill || globalThis.WebSocket
    this.EventSource = opts.EventSourcePolyfill || globalThis.EventSource
    this._fetch = opts.fetch || ((...a) => globalThis.fetch(...a))
    this.params = { ...(opts.params || {}) }
    this.getToken = opts.getToken || null
    this.presenceSession = randomToken()
    /** The transport in use: 'websocket' | 'sse' | 'polling' (null while none). */
    this.transport = null
    /** The last seq this provider holds: SSE ids and poll answers (the cursor a
     * reconnect resumes from), write acks over WebSocket. */
    this.seq = 0
    this.synced = false
    this.status = 'disconnected'
    this._level = 0
    this._failures = 0
    this._attempt = 0
    this._authAttempt = 0
    this._current = null
    this._timer = null
    this._probe = null
    this._unsent = []
    this._posting = false
    this._renew = null

    this._onDocUpdate = (update, origin) => {
      if (origin === this) return
      const current = this._current
      // Over WebSocket an edit is sent at once, and one made while disconnected reaches
      // the server through the sync step 1/2 exchange of the next connection. Over HTTP
      // it waits here until a POST stores it.
      if (!current || current.kind !== 'websocket') this._unsent.push(update)
      if (current) current.sendUpdate(update)
    }
    this._onAwarenessUpdate = ({ added, updated, removed }, origin) => {
      if (origin === this) return
      const changed = added.concat(updated, removed)
      if (this._current) this._current.sendAwareness(changed)
    }
    doc.on('update', this._onDocUpdate)
    this.awareness.on('update', this._onAwarenessUpdate)
    if (opts.connect !== false) this.connect()
  }

  _url (path, query = {}) {
    const params = new URLSearchParams({ ...query, ...this.params })
    const qs = params.toString()
    return `${this.serverUrl}${path}${qs ? '?' + qs : ''}`
  }

  _roomPath (suffix) {
    return `/rooms/${encodeURIComponent(this.room)}${suffix}`
  }

  _setStatus (status) {
    if (this.status === status) return
    this.status = status
    this.emit('status', [{ status, transport: this.transport }])
  }

  _setSynced (synced) {
    if (this.synced === synced) return
    this.synced = synced
    this.emit('sync', [synced])
    this.emit('synced', [synced])
  }

  connect () {
    this._shouldConnect = true
    if (!this._current && !this._timer) this._run()
  }

  disconnect () {
    this._shouldConnect = false
    clearTimeout(this._timer)
    this._timer = null
    this._stopProbe()
    if (this._current) this._current.stop()
    this._current = null
    this.transport = null
    this._setSynced(false)
    this._setStatus('disconnected')
  }

  destroy () {
    // Leave presence everywhere before going.
    awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], 'destroy')
    this.disconnect()
    clearInterval(this._renew)
    this.doc.off('update', this._onDocUpdate)
    this.awareness.off('update', this._onAwarenessUpdate)
    super.destroy()
  }

  _run () {
    this._timer = null
    if (!this._shouldConnect) return
    const kind = this.transports[this._level]
    this.transport = kind
    this._setStatus('connecting')
    const Transport = { websocket: WsTransport, sse: SseTransport, polling: PollTransport }[kind]
    let opened = false
    let openedAt = 0
    const transport = new Transport(this, {
      opened: () => {
        opened = true
        openedAt = Date.now()
        this._failures = 0
        this._attempt = 0
        this._authAttempt = 0
        this._setStatus('connected')
        this._startProbe()
      },
      // `auth`: true when the server said the token is missing, invalid or expired (401,
      // close code 4401), false when it said something else, null when the transport
      // cannot tell (EventSource errors, a refused upgrade).
      closed: (retryAfter = null, auth = false) => {
        if (this._current !== transport) return
        this._current = null
        this._setSynced(false)
        this._setStatus('disconnected')
        const ended = { kind, opened, openedAt, retryAfter }
        if (this.getToken && auth !== false) {
          this._timer = setTimeout(() => this._renewToken(ended, auth), 0)
        } else {
          this._retry(ended)
        }
      }
    })
    this._current = transport
    transport.start()
  }

  // The room was deleted (close code 4410, an SSE `reset`, a poll answer with `reset`, a
  // POST answered 410): this document holds what was deleted, and syncing it would bring
  // it back (the server refuses that too). The provider stops for good and says so; the
  // application starts a new Y.Doc and a new provider (see README).
  _roomDeleted (info = {}) {
    if (this.deleted) return
    this.deleted = true
    this._unsent = []
    this.disconnect()
    this.emit('deleted', [info])
  }

  // Reconnect after a backoff; a transport that keeps failing gives way to the next.
  _retry ({ kind, opened, openedAt, retryAfter }) {
    // Never opened, or cut at once (a proxy that drops upgraded connections).
    const failed = !opened || Date.now() - openedAt < 2000
    this._failures = failed ? this._failures + 1 : 0
    if (failed && this._failures >= this.failuresBeforeFallback &&
        this._level < this.transports.length - 1) {
      this._level++
      this._failures = 0
      this._attempt = 0
    }
    this.emit('connection-error', [{ transport: kind, opened }])
    const delay = retryAfter ?? backoffDelay(this._attempt++, this.backoff)
    if (this._shouldConnect) this._timer = setTimeout(() => this._run(), delay)
  }

  // A connection ended for want of a valid token: ask `opts.getToken()` for a new one
  // and connect again at once (the document and the seq stay, so nothing is lost). When
  // the cause is unknown, `GET /rooms/{room}` with the current token tells.
  async _renewToken (ended, auth) {
    this._timer = null
    if (auth === null) {
      try {
        auth = (await this._fetch(this._url(this._roomPath('')))).status === 401
      } catch (e) {
        auth = false
      }
    }
    if (!this._shouldConnect) return
    if (!auth) return this._retry(ended)
    try {
      this.params.token = await this.getToken()
      this.emit('token-renewed', [{ transport: ended.kind }])
    } catch (e) {
      this.emit('connection-error', [{ transport: ended.kind, opened: ended.opened, error: e }])
    }
    // A new token that is refused again waits like any failed connection.
    const delay = backoffDelay(this._authAttempt++, this.backoff)
    if (this._shouldConnect && !this._timer) this._timer = setTimeout(() => this._run(), delay)
  }

  // While on a fallback, try WebSocket now and then; move back up when it opens.
  _startProbe () {
    this._stopProbe()
    if (this._level === 0 || this.transports[0] !== 'websocket') return
    this._probe = setInterval(() => {
      let ws
      try {
        ws = new this.WebSocket(this._wsUrl())
      } catch (e) {
        return
      }
      ws.binaryType = 'arraybuffer'
      ws.onopen = () => {
        ws.close()
        if (!this._current || this._level === 0) return
        this._stopProbe()
        const current = this._current
        this._current = null
        current.stop()
        this._level = 0
        this._failures = 0
        this._attempt = 0
        this._run()
      }
      ws.onerror = () => {}
    }, this.probeIntervalMs)
  }

  _stopProbe () {
    clearInterval(this._probe)
    this._probe = null
  }

  _wsUrl () {
    const base = this.serverUrl.replace(/^http/, 'ws')
    return this._url(`/ws/${encodeURIComponent(this.room)}`).replace(this.serverUrl, base)
  }

  // HTTP writes: what was edited and not yet stored goes in one POST; a 409 (the server
  // lacks what it builds on) sends the whole local state. Yjs updates are idempotent, so
  // sending something twice never changes the document.
  async _flushHttp () {
    if (this._posting || this._unsent.length === 0) return
    this._posting = true
    const batch = this._unsent.slice()
    try {
      let res = await this._post(this._roomPath('/updates'), Y.mergeUpdates(batch))
      if (res.status === 409) {
        res = await this._post(this._roomPath('/updates'), Y.encodeStateAsUpdate(this.doc))
      }
      if (res.status === 410) {
        this._posting = false
        return this._roomDeleted({ transport: this.transport })
      }
      if (res.ok) {
        // The answer's seq is not a read cursor: updates of others below it may not
        // have been read yet, so `this.seq` moves only with what the reads deliver.
        await res.json()
        this._unsent.splice(0, batch.length)
      } else if (res.status >= 500 || res.status === 429 || res.status === 401) {
        throw Object.assign(new Error('HTTP ' + res.status),
          { retryAfter: retryAfterMs(res), auth: res.status === 401 })
      }
    } finally {
      this._posting = false
    }
    if (this._unsent.length > 0) return this._flushHttp()
  }

  _post (path, body, headers = {}) {
    return this._fetch(this._url(path), {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body
    })
  }
}

/** The y-websocket protocol over `/ws/{room}`. */
class WsTransport {
  constructor (provider, events) {
    this.kind = 'websocket'
    this.p = provider
    this.events = events
  }

  start () {
    const p = this.p
    let ws
    try {
      ws = new p.WebSocket(p._wsUrl())
    } catch (e) {
      setTimeout(() => this.events.closed(null), 0)
      return
    }
    this.ws = ws
    ws.binaryType = 'arraybuffer'
    ws.onopen = () => {
      this.opened = true
      this.events.opened()
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MSG_SYNC)
      syncProtocol.writeSyncStep1(encoder, p.doc)
      this._send(encoding.toUint8Array(encoder))
      if (p.awareness.getLocalState() !== null) this.sendAwareness([p.doc.clientID])
      this._touch()
    }
    ws.onmessage = event => {
      this._touch()
      this._receive(new Uint8Array(event.data))
    }
    // 4401: the token expired (or was refused); a refused upgrade cannot be told apart
    // from a network failure here, so `null` (unknown) for a socket that never opened.
    // 4403: the token was revoked (a new one is needed, as for expiry); 4410: the room
    // was deleted.
    ws.onclose = event => {
      if (event.code === 4410) {
        clearTimeout(this.deadline)
        this.stopped = true
        return p._roomDeleted({ transport: 'websocket' })
      }
      const auth = event.code === 4401 || event.code === 4403
      this._closed(auth ? true : this.opened ? false : null)
    }
    ws.onerror = () => {}
  }

  // No message for messageTimeoutMs: the connection is dead (y-websocket does the same).
  _touch () {
    clearTimeout(this.deadline)
    this.deadline = setTimeout(() => this.ws && this.ws.close(), this.p.messageTimeoutMs)
  }

  _closed (auth) {
    clearTimeout(this.deadline)
    if (this.stopped) return
    this.stopped = true
    this.events.closed(null, auth)
  }

  stop () {
    this.stopped = true
    clearTimeout(this.deadline)
    if (this.ws) this.ws.close()
  }

  _send (bytes) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(bytes)
  }

  _receive (data) {
    const p = this.p
    const decoder = decoding.createDecoder(data)
    const encoder = encoding.createEncoder()
    while (decoding.hasContent(decoder)) {
      const type = decoding.readVarUint(decoder)
      if (type === MSG_SYNC) {
        encoding.writeVarUint(encoder, MSG_SYNC)
        const sub = syncProtocol.readSyncMessage(decoder, encoder, p.doc, p)
        if (sub === syncProtocol.messageYjsSyncStep2) {
          p._unsent = []
          p._setSynced(true)
          this._requestAck()
        }
        if (encoding.length(encoder) > 1) this._send(encoding.toUint8Array(encoder))
        return this._receive(decoding.readTailAsUint8Array(decoder))
      } else if (type === MSG_AWARENESS) {
        awarenessProtocol.applyAwarenessUpdate(p.awareness, decoding.readVarUint8Array(decoder), p)
      } else if (type === MSG_QUERY_AWARENESS) {
        this.sendAwareness(Array.from(p.awareness.getStates().keys()))
      } else if (type === MSG_AUTH) {
        const denied = decoding.readVarUint(decoder) === 0
        const reason = denied ? decoding.readVarString(decoder) : ''
        if (denied) p.emit('permission-denied', [reason])
      } else if (type === MSG_ACK) {
        const body = decoding.createDecoder(decoding.readVarUint8Array(decoder))
        decoding.readVarUint(body) // token
        const seq = decoding.readVarUint(body)
        if (decoding.readVarUint(body) !== 0) p.emit('write-refused', [{ seq }])
        if (seq > p.seq) p.seq = seq
        this.ackPending = false
        if (this.ackWanted) this._requestAck()
      } else {
        decoding.readVarUint8Array(decoder) // custom message: skipped
      }
    }
  }

  sendUpdate (update) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MSG_SYNC)
    syncProtocol.writeUpdate(encoder, update)
    this._send(encoding.toUint8Array(encoder))
    this._requestAck()
  }

  // collabd's write ack: the server answers once everything sent before the request is
  // durable, with the room's durable seq, which then becomes `.seq` (every update up to
  // it has reached this socket before the answer). One request in flight at a time.
  _requestAck () {
    if (!this.ws || this.ws.readyState !== 1) return
    if (this.ackPending) {
      this.ackWanted = true
      return
    }
    this.ackPending = true
    this.ackWanted = false
    const body = encoding.createEncoder()
    encoding.writeVarUint(body, (this.ackToken = (this.ackToken || 0) + 1))
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MSG_ACK)
    encoding.writeVarUint8Array(encoder, encoding.toUint8Array(body))
    this._send(encoding.toUint8Array(encoder))
  }

  sendAwareness (clients) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MSG_AWARENESS)
    encoding.writeVarUint8Array(encoder,
      awarenessProtocol.encodeAwarenessUpdate(this.p.awareness, clients))
    this._send(encoding.toUint8Array(encoder))
  }
}

/** Reads and writes over HTTP: shared by SSE and polling. */
class HttpTransport {
  constructor (provider, events) {
    this.p = provider
    this.events = events
  }

  _fail (retryAfter = null, auth = false) {
    if (this.stopped) return
    this.stopped = true
    this._stopHttp()
    this.events.closed(retryAfter, auth)
  }

  _opened () {
    this.events.opened()
    // The server may lack local edits (made offline, or before this provider existed):
    // the whole local state goes once per connection. The server stores only what it
    // lacks; an update it already has changes nothing and is not logged.
    const p = this.p
    p._unsent = [Y.encodeStateAsUpdate(p.doc)]
    this.sendUpdate()
    if (p.awareness.getLocalState() !== null) this.sendAwareness([p.doc.clientID])
    // Presence posted over HTTP expires unless renewed.
    clearInterval(p._renew)
    p._renew = setInterval(() => {
      if (p.awareness.getLocalState() !== null) this.sendAwareness([p.doc.clientID])
    }, 10000)
  }

  _stopHttp () {
    clearInterval(this.p._renew)
  }

  _apply (base64) {
    Y.applyUpdate(this.p.doc, fromBase64(base64), this.p)
  }

  sendUpdate () {
    this.p._flushHttp().catch(e => this._fail(e.retryAfter ?? null, e.auth ?? false))
  }

  sendAwareness (clients) {
    this.postAwareness(clients).catch(() => {})
  }

  postAwareness (clients) {
    const p = this.p
    const update = awarenessProtocol.encodeAwarenessUpdate(p.awareness, clients)
    return p._post(p._roomPath('/awareness'), update, { 'x-presence-session': p.presenceSession })
  }
}

/** Server-Sent Events for reads (`/rooms/{room}/events`, resumed by seq). */
class SseTransport extends HttpTransport {
  constructor (provider, events) {
    super(provider, events)
    this.kind = 'sse'
  }

  start () {
    const p = this.p
    const query = p.seq > 0 ? { since: String(p.seq) } : {}
    let es
    try {
      es = new p.EventSource(p._url(p._roomPath('/events'), query))
    } catch (e) {
      setTimeout(() => this._fail(), 0)
      return
    }
    this.es = es
    let opened = false
    es.onopen = () => {
      if (opened) return
      opened = true
      this._opened()
    }
    const onDoc = e => {
      this._touch()
      this._apply(e.data)
      const seq = Number(e.lastEventId)
      if (seq > p.seq) p.seq = seq
    }
    es.addEventListener('snapshot', onDoc)
    es.addEventListener('update', onDoc)
    // The catch-up (replay or snapshot) is done: everything up to `seq` is here.
    es.addEventListener('synced', e => {
      this._touch()
      const { seq } = JSON.parse(e.data)
      if (seq > p.seq) p.seq = seq
      p._setSynced(true)
    })
    // The room was deleted: the stream ends; this document must not be synced again.
    es.addEventListener('reset', e => {
      this.stop()
      p._roomDeleted({ transport: 'sse', ...JSON.parse(e.data) })
    })
    // The token was revoked: a new one is needed.
    es.addEventListener('revoked', () => this._fail(null, true))
    es.addEventListener('awareness', e => {
      this._touch()
      awarenessProtocol.applyAwarenessUpdate(p.awareness, fromBase64(e.data), p)
    })
    // The server's heartbeat: a stream silent for sseTimeoutMs is dead.
    es.addEventListener('ping', () => this._touch())
    this._touch()
    // The provider reconnects itself (with ?since=), not EventSource. An EventSource
    // error does not say why (the stream also ends when the token expires): unknown.
    es.onerror = () => this._fail(null, null)
  }

  _touch () {
    clearTimeout(this.deadline)
    this.deadline = setTimeout(() => this._fail(), this.p.sseTimeoutMs)
  }

  stop () {
    this.stopped = true
    this._stopHttp()
  }

  _stopHttp () {
    super._stopHttp()
    clearTimeout(this.deadline)
    if (this.es) this.es.close()
  }
}

/** Long polling (`/rooms/{room}/updates?since=&wait=`) and `/rooms/{room}/awareness`. */
class PollTransport extends HttpTransport {
  constructor (provider, events) {
    super(provider, events)
    this.kind = 'polling'
  }

  start () {
    this.controller = new AbortController()
    this._loop().catch(e => this._fail(e.retryAfter ?? null, e.auth ?? false))
  }

  stop () {
    this.stopped = true
    this._stopHttp()
    if (this.controller) this.controller.abort()
  }

  async _get (path, query) {
    const p = this.p
    // A poll that outlives its wait by far is a dead connection.
    const timeout = setTimeout(() => this.controller.abort(), (p.pollWaitS + 10) * 1000)
    try {
      const res = await p._fetch(p._url(path, query), { signal: this.controller.signal })
      if (!res.ok) {
        throw Object.assign(new Error('HTTP ' + res.status),
          { retryAfter: retryAfterMs(res), auth: res.status === 401 })
      }
      return res
    } finally {
      clearTimeout(timeout)
    }
  }

  async _loop () {
    const p = this.p
    let first = true
    while (!this.stopped) {
      const query = p.seq > 0 || !first
        ? { since: String(p.seq), wait: first ? '0' : String(p.pollWaitS) }
        : {}
      const answer = await (await this._get(p._roomPath('/updates'), query)).json()
      if (answer.reset) {
        this.stop()
        return p._roomDeleted({ transport: 'polling', epoch: answer.epoch, seq: answer.seq })
      }
      if (answer.snapshot) this._apply(answer.snapshot)
      for (const { update } of answer.updates || []) this._apply(update)
      if (answer.updates && answer.updates.length) {
        p.seq = Math.max(p.seq, answer.updates[answer.updates.length - 1].seq)
      } else if (answer.snapshot) {
        p.seq = Math.max(p.seq, answer.seq)
      }
      const presence = await this._get(p._roomPath('/awareness'), {})
      awarenessProtocol.applyAwarenessUpdate(p.awareness,
        new Uint8Array(await presence.arrayBuffer()), p)
      if (first) {
        first = false
        this._opened()
        p._setSynced(true)
      }
    }
  }
}
