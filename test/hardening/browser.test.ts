import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_SUBSCRIPTION } from '../../src/demo/demo.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTestServer, type TestServer } from '../support/test-server.js';

/**
 * The README's first steps, in a real browser: open GraphiQL at /graphql, put the token into
 * the Headers tab, run `{ me { name } }`, see your name. The browser only reaches the pvegraph
 * server (every other request is refused, as on a machine without internet access), so
 * GraphiQL must be served whole by pvegraph itself.
 */

const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT = '/tmp/hardening-graphiql.png';

describe('the GraphiQL page', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('is served whole by pvegraph: no scripts, styles or workers from other hosts (works offline)', async () => {
    const res = await fetch(`${server.url}/graphql`, { headers: { accept: 'text/html' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/html');
    const html = await res.text();
    const external = [...html.matchAll(/https?:\/\/[^\s"'<>)\\]+/g)]
      .map((m) => m[0])
      .filter((u) => !u.startsWith(server.url));
    // Links in comments or licence banners would be harmless; loading code from them is not.
    const loaded = external.filter((u) => /\.(m?js|css)(\?|$)/.test(u));
    expect(loaded, 'GraphiQL loads assets from a CDN: it is blank without internet access').toEqual([]);
  });
});

// Skipped only where Debian's chromium package is not installed (`apt-get install chromium`;
// .ci/run installs it): playwright-core ships no browser, and these tests need a real one.
describe.skipIf(!existsSync(CHROMIUM))('GraphiQL in a real browser', () => {
  let server: TestServer;
  let browser: Browser;
  let userDataDir: string;
  let user: { name: string; token: string };
  let sim: Simulator;

  beforeAll(async () => {
    server = await startTestServer();
    sim = await startTestSimulator({ guests: 3 });
    user = await server.createUser(`graphiql-${Date.now().toString(36)}`);
    userDataDir = mkdtempSync('/tmp/hardening-chromium-');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // playwright-core refuses --user-data-dir in launch() args; it starts every launch with
        // a fresh temporary profile of its own. This directory holds crash dumps and caches.
        `--disk-cache-dir=${userDataDir}/cache`,
        `--crash-dumps-dir=${userDataDir}/crashes`,
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    await sim?.stop();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  });

  /** Lets the page reach the pvegraph server only; records what else it asked for. */
  async function onlyTheServer(page: Page): Promise<string[]> {
    const refused: string[] = [];
    const origin = new URL(server.url).origin;
    await page.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(origin) || url.startsWith('data:') || url.startsWith('blob:')) return route.continue();
      refused.push(url);
      return route.abort('internetdisconnected');
    });
    return refused;
  }

  /** Replaces the whole text of a GraphiQL (Monaco) editor. */
  async function replaceEditorText(page: Page, editor: ReturnType<Page['locator']>, text: string) {
    await editor.click();
    await page.keyboard.press('ControlOrMeta+A');
    await page.keyboard.press('Delete');
    // insertText does not go through Monaco's bracket/quote auto-closing, typing would.
    await page.keyboard.insertText(text);
  }

  it('runs { me { name } } with the token from the Headers tab and shows the name', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const page = await context.newPage();
      const consoleErrors: string[] = [];
      page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
      page.on('pageerror', (e) => consoleErrors.push(e.message));
      const refused = await onlyTheServer(page);
      // GraphiQL's own introspection query (exempt from the depth limit) loads the schema.
      const introspections: Array<Promise<{ status: number; body: string }>> = [];
      page.on('response', (r) => {
        if (r.request().postData()?.includes('query IntrospectionQuery'))
          introspections.push(r.text().then((body) => ({ status: r.status(), body })));
      });

      const res = await page.goto(`${server.url}/graphql`);
      expect(res?.status()).toBe(200);
      expect(await page.title()).toBe('pvegraph');

      // GraphiQL is up once its query editor shows the default query the server configures.
      const container = page.locator('.graphiql-container').first();
      await container.waitFor({ timeout: 10_000 }).catch(async (err: unknown) => {
        await page.screenshot({ path: SCREENSHOT, fullPage: true });
        throw new Error(
          'GraphiQL did not render using the pvegraph server alone. ' +
            `Requests to other hosts: ${JSON.stringify(refused)}; page errors: ${JSON.stringify(consoleErrors.slice(0, 5))}. ` +
            `Screenshot: ${SCREENSHOT}. (${String(err)})`,
        );
      });
      const queryEditor = page.locator('.graphiql-query-editor .monaco-editor').first();
      await expect.poll(() => queryEditor.innerText(), { timeout: 15_000 }).toContain('me');

      // Headers tab: the server pre-fills it with a placeholder; replace it with the token.
      await page.locator('.graphiql-editor-tools button[data-name="headers"]').click();
      const headersEditor = page.locator('.graphiql-editor-tool .monaco-editor').last();
      await headersEditor.waitFor();
      await expect.poll(() => headersEditor.innerText()).toContain('Authorization');
      await replaceEditorText(page, headersEditor, `{"Authorization": "Bearer ${user.token}"}`);

      await replaceEditorText(page, queryEditor, '{ me { name } }');
      // GraphiQL takes the operation name from the editor after a debounce: running before it
      // caught up would ask for the default query's "Me". The active tab shows that name.
      const activeTab = page.locator('.graphiql-tab-active button').first();
      await expect.poll(() => activeTab.getAttribute('title')).not.toBe('Me');
      await page.locator('.graphiql-execute-button').click();

      const response = page.locator('.graphiql-response');
      await expect.poll(() => response.innerText(), { timeout: 15_000 }).toContain(user.name);
      const shown = await response.innerText();
      expect(shown).toContain('"me"');
      expect(shown).not.toContain('UNAUTHENTICATED');
      expect(introspections.length).toBeGreaterThan(0);
      for (const answer of await Promise.all(introspections)) {
        expect(answer.status).toBe(200);
        expect(JSON.parse(answer.body)).toMatchObject({ data: { __schema: { queryType: { name: 'Query' } } } });
      }

      await page.screenshot({ path: SCREENSHOT });
      expect(refused, 'GraphiQL asked hosts other than the pvegraph server').toEqual([]);
    } finally {
      await context.close();
    }
  }, 60_000);

  it('runs the subscription of the link `npm run demo` prints and shows an event arriving live', async () => {
    // A node of the user whose VMID events the subscription receives.
    const created = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${user.token}` },
      body: JSON.stringify({
        query: 'mutation($i: CreateNodeInput!) { createNode(input: $i) { id } }',
        variables: { i: nodeInputFor(sim) },
      }),
    }).then((r) => r.json() as Promise<{ data: { createNode: { id: string } } }>);
    const nodeId = created.data.createNode.id;

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const page = await context.newPage();
      const refused = await onlyTheServer(page);
      // The link as the demo prints it: GraphiQL opens with the subscription in its editor.
      await page.goto(`${server.url}/graphql?query=${encodeURIComponent(DEMO_SUBSCRIPTION)}`);
      const queryEditor = page.locator('.graphiql-query-editor .monaco-editor').first();
      await expect.poll(() => queryEditor.innerText(), { timeout: 15_000 }).toContain('vmidEvents');

      await page.locator('.graphiql-editor-tools button[data-name="headers"]').click();
      const headersEditor = page.locator('.graphiql-editor-tool .monaco-editor').last();
      await headersEditor.waitFor();
      await replaceEditorText(page, headersEditor, `{"Authorization": "Bearer ${user.token}"}`);
      const activeTab = page.locator('.graphiql-tab-active button').first();
      await expect.poll(() => activeTab.getAttribute('title')).toBe('LiveVmids');
      await page.locator('.graphiql-execute-button').click();

      // The subscription's first event (SYNC) says it is live; then a change made elsewhere
      // (here: a VMID reserved through the API) arrives in the open page.
      const response = page.locator('.graphiql-response');
      await expect.poll(() => response.innerText(), { timeout: 15_000 }).toContain('SYNC');
      const reserved = await fetch(server.graphqlUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${user.token}` },
        body: JSON.stringify({
          query: 'mutation($n: ID!) { reserveVmid(nodeId: $n, ttlSeconds: 60) { vmid } }',
          variables: { n: nodeId },
        }),
      }).then((r) => r.json() as Promise<{ data: { reserveVmid: { vmid: number } } }>);
      expect(reserved.data.reserveVmid.vmid).toBeGreaterThanOrEqual(100);
      await expect.poll(() => response.innerText(), { timeout: 15_000 }).toContain('RESERVED');
      const shown = await response.innerText();
      expect(shown).toContain(nodeId);
      expect(refused, 'GraphiQL asked hosts other than the pvegraph server').toEqual([]);
    } finally {
      await context.close();
    }
  }, 60_000);
});
