// The whiteboard: shapes and strokes in Yjs types, drawn on a canvas, with everyone's
// pointer from awareness.
//
// The document holds a Y.Array `shapes` of Y.Maps:
//   { id, kind: 'stroke', color, width, points: Y.Array<number> (x0, y0, x1, y1, …) }
//   { id, kind: 'rect' | 'ellipse', color, width, x, y, w, h }
// in the canvas's own coordinates (800 × 520), whatever size it is shown at. A stroke
// grows point by point while it is drawn, so others see it being drawn.
// Awareness carries `pointer: {x, y}` (or null) next to y-codemirror's `user`.
import * as Y from 'yjs'

const POINTER_INTERVAL_MS = 50

export class Whiteboard {
  constructor (canvas, doc, awareness) {
    this.canvas = canvas
    this.ctx = canvas.getContext('2d')
    this.doc = doc
    this.awareness = awareness
    this.shapes = doc.getArray('shapes')
    this.tool = 'pen'
    this.color = '#1f6feb'
    this.current = null
    this.lastPointer = 0
    this.frame = 0
    this.shapes.observeDeep(() => this.redraw())
    awareness.on('change', () => this.redraw())
    canvas.addEventListener('pointerdown', e => this.down(e))
    canvas.addEventListener('pointermove', e => this.move(e))
    canvas.addEventListener('pointerup', () => this.up())
    canvas.addEventListener('pointercancel', () => this.up())
    canvas.addEventListener('pointerleave', () => {
      this.up()
      this.awareness.setLocalStateField('pointer', null)
    })
    this.redraw()
  }

  // Canvas coordinates of a pointer event, whatever the canvas's displayed size.
  at (e) {
    const box = this.canvas.getBoundingClientRect()
    return {
      x: Math.round((e.clientX - box.left) * this.canvas.width / box.width),
      y: Math.round((e.clientY - box.top) * this.canvas.height / box.height)
    }
  }

  down (e) {
    this.canvas.setPointerCapture(e.pointerId)
    const { x, y } = this.at(e)
    const shape = new Y.Map()
    shape.set('id', `${this.doc.clientID}-${Date.now().toString(36)}`)
    shape.set('kind', this.tool === 'pen' ? 'stroke' : this.tool)
    shape.set('color', this.color)
    shape.set('width', 3)
    if (this.tool === 'pen') {
      const points = new Y.Array()
      points.push([x, y])
      shape.set('points', points)
    } else {
      for (const [k, v] of Object.entries({ x, y, w: 0, h: 0 })) shape.set(k, v)
    }
    this.shapes.push([shape])
    this.current = { shape, x, y }
  }

  move (e) {
    const { x, y } = this.at(e)
    const now = Date.now()
    if (now - this.lastPointer >= POINTER_INTERVAL_MS) {
      this.lastPointer = now
      this.awareness.setLocalStateField('pointer', { x, y })
    }
    const current = this.current
    if (!current) return
    if (current.shape.get('kind') === 'stroke') {
      // Skip points closer than 3 px to the last one: the stroke looks the same.
      if (Math.hypot(x - current.x, y - current.y) < 3) return
      current.x = x
      current.y = y
      current.shape.get('points').push([x, y])
    } else {
      this.doc.transact(() => {
        current.shape.set('w', x - current.x)
        current.shape.set('h', y - current.y)
      })
    }
  }

  up () {
    this.current = null
  }

  clear () {
    this.doc.transact(() => this.shapes.delete(0, this.shapes.length))
  }

  // At most one redraw per animation frame, however many changes arrive.
  redraw () {
    if (this.frame) return
    const schedule = globalThis.requestAnimationFrame || (f => setTimeout(f, 16))
    this.frame = schedule(() => {
      this.frame = 0
      this.draw()
    })
  }

  draw () {
    const ctx = this.ctx
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height)
    ctx.lineCap = 'round'
    ctx.lineJoin = 'round'
    for (const shape of this.shapes) {
      if (!(shape instanceof Y.Map)) continue
      ctx.strokeStyle = String(shape.get('color') || '#000')
      ctx.lineWidth = Number(shape.get('width')) || 3
      ctx.beginPath()
      const kind = shape.get('kind')
      if (kind === 'stroke') {
        const points = shape.get('points')
        if (!(points instanceof Y.Array)) continue
        const p = points.toArray()
        ctx.moveTo(p[0], p[1])
        for (let i = 2; i + 1 < p.length; i += 2) ctx.lineTo(p[i], p[i + 1])
        if (p.length === 2) ctx.lineTo(p[0] + 0.1, p[1])
      } else if (kind === 'rect') {
        ctx.rect(shape.get('x'), shape.get('y'), shape.get('w'), shape.get('h'))
      } else if (kind === 'ellipse') {
        const w = shape.get('w')
        const h = shape.get('h')
        ctx.ellipse(shape.get('x') + w / 2, shape.get('y') + h / 2, Math.abs(w / 2), Math.abs(h / 2), 0, 0, 2 * Math.PI)
      }
      ctx.stroke()
    }
    // Everyone else's pointer, with their name.
    ctx.font = '13px system-ui, sans-serif'
    for (const [id, state] of this.awareness.getStates()) {
      if (id === this.doc.clientID || !state.pointer || !state.user) continue
      const { x, y } = state.pointer
      ctx.fillStyle = state.user.color || '#444'
      ctx.beginPath()
      ctx.moveTo(x, y)
      ctx.lineTo(x + 4, y + 15)
      ctx.lineTo(x + 11, y + 10)
      ctx.closePath()
      ctx.fill()
      ctx.fillText(String(state.user.name || 'someone'), x + 13, y + 22)
    }
  }
}
