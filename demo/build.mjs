// Bundles the demo into one directory: node build.mjs OUT_DIR writes OUT_DIR/index.html,
// OUT_DIR/demo.js and OUT_DIR/demo.css. collabd's build.rs runs this (after `npm ci` here)
// and embeds the result in the binary; nothing it writes is committed.
import { copyFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = dirname(fileURLToPath(import.meta.url))
const out = process.argv[2]
if (!out) {
  console.error('usage: node build.mjs OUT_DIR')
  process.exit(2)
}
mkdirSync(out, { recursive: true })

// The provider lives in ../clients/js and imports yjs, y-protocols and lib0 by name.
// Node's lookup would take them from whichever node_modules lies above that file (the
// repository root has its own, for the interop tests), and two copies of Yjs in one
// page break it. Every such import is resolved from this directory instead.
const shared = /^(yjs|y-protocols|lib0)(\/.*)?$/
const oneYjs = {
  name: 'one-yjs',
  setup (build) {
    build.onResolve({ filter: shared }, args => {
      if (args.pluginData === 'one-yjs') return undefined
      return build.resolve(args.path, { kind: args.kind, resolveDir: here, pluginData: 'one-yjs' })
    })
  }
}

await esbuild.build({
  entryPoints: [join(here, 'src/main.js')],
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  sourcemap: false,
  outfile: join(out, 'demo.js'),
  plugins: [oneYjs],
  logLevel: 'warning'
})
copyFileSync(join(here, 'index.html'), join(out, 'index.html'))
copyFileSync(join(here, 'style.css'), join(out, 'demo.css'))
