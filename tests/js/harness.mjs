// Shared by the JavaScript interop tests: start and stop the real collabd binary, wait
// for conditions with a bound, fail loudly.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const PATIENCE_MS = 20000

const bin = process.env.YJS_INTEROP_SERVER_BIN
if (!bin) {
  console.error('YJS_INTEROP_SERVER_BIN must name the collabd binary (cargo test sets it)')
  process.exit(2)
}

export function tempDataDir () {
  const dir = mkdtempSync(join(tmpdir(), 'collabd-interop-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

// Starts collabd; resolves with { port, stop() } once it logs its address.
export function startServer (dataDir, bind = '127.0.0.1:0', extraArgs = []) {
  return startProcess(bin, ['--bind', bind, '--data-dir', dataDir, ...extraArgs])
}

// Starts any program that logs "listening on 127.0.0.1:PORT" (collabd, or an app that
// embeds it); resolves with { port, pid, logs, stop(), kill() }.
export function startProcess (program, args = [], env = {}) {
  const child = spawn(program, args, {
    env: { ...process.env, RUST_LOG: 'info', ...env },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  const logs = []
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start:\n' + logs.join(''))), PATIENCE_MS)
    child.on('exit', code => reject(new Error(`server exited with ${code}:\n` + logs.join(''))))
    child.stderr.on('data', chunk => {
      const text = chunk.toString()
      logs.push(text)
      if (process.env.INTEROP_VERBOSE) process.stderr.write(text)
      const m = text.match(/listening on 127\.0\.0\.1:(\d+)/)
      if (m) {
        clearTimeout(timer)
        resolve({
          port: Number(m[1]),
          pid: child.pid,
          logs,
          // SIGTERM and wait for a clean exit.
          stop: () => new Promise((resolve, reject) => {
            child.removeAllListeners('exit')
            child.on('exit', code => code === 0 ? resolve() : reject(new Error(`exit code ${code}`)))
            child.kill('SIGTERM')
          }),
          // SIGKILL; resolves once the process is gone.
          kill: () => new Promise(resolve => {
            child.removeAllListeners('exit')
            if (child.exitCode !== null || child.signalCode !== null) return resolve()
            child.on('exit', () => resolve())
            child.kill('SIGKILL')
          })
        })
      }
    })
  })
}

export async function until (what, predicate) {
  if (process.env.INTEROP_VERBOSE) console.error(new Date().toISOString(), 'waiting for', what)
  const deadline = Date.now() + PATIENCE_MS
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

export function assertEqual (actual, expected, what) {
  const a = JSON.stringify(actual)
  const e = JSON.stringify(expected)
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`)
}

export function run (name, body) {
  body().then(() => {
    console.log(`ok - ${name}`)
    process.exit(0)
  }, err => {
    console.error(`not ok - ${name}: ${err.stack || err}`)
    process.exit(1)
  })
}

// A stock y-websocket client (WebsocketProvider, unchanged) on `room`, announcing `name`.
// disableBc: clients in one process must not sync around the server.
export async function yWebsocketClient (port, room, name) {
  const Y = await import('yjs')
  const { WebsocketProvider } = await import('y-websocket')
  const { default: WebSocket } = await import('ws')
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://127.0.0.1:${port}/ws`, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 300
  })
  provider.awareness.setLocalStateField('user', { name })
  return { name, doc, provider }
}

