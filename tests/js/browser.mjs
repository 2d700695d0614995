// Debian's Chromium (/usr/bin/chromium) through playwright-core, for the browser tests;
// playwright never downloads a browser here.
import { chromium } from 'playwright-core'
import { PATIENCE_MS } from './harness.mjs'

// Headless, with a fresh empty profile (playwright's default); no network beyond
// localhost is reachable here, so background fetches are turned off.
export function launchChromium () {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: PATIENCE_MS
  })
}
