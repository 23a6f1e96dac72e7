// The inspector page: its routes (auth required, never through a socket's tunnel), the operator state after real
// traffic, and the page itself in headless Chromium (connect, subscribe, see a publish, see the socket).
//
// Chromium is driven from a child process running this same file (HAPI_PULSE_INSPECTOR_URL set), as in
// test/browser.ts: playwright-core leaves process-wide globals that lab would report as leaks.

import * as Fs from 'node:fs';
import * as Path from 'node:path';

import * as Code from '@hapi/code';
import * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import { MeterProvider } from '@opentelemetry/sdk-metrics';

import { chromiumSkipped, drive, requireChromium, runDriver } from './chromium';
import { Nes, Peer, server, teardown, until, url } from './helpers';

const driverUrl = process.env.HAPI_PULSE_INSPECTOR_URL;

const { expect } = Code;
export const lab = Lab.script({ schedule: !driverUrl });
const { describe, it } = lab;

const bundlePath = Path.join(__dirname, '..', 'browser', 'hapi-pulse.min.js');

const basic = (user: string, password = 'secret') => 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64');

// Basic auth: every user's password is "secret"; "admin" alone has the admin scope. The inspector asks for it.
const withUsers = async (hapi: Hapi.Server): Promise<void> => {

    await hapi.register(require('@hapi/basic'));
    hapi.auth.strategy('basic', 'basic', {
        validate: (_request: unknown, user: string, password: string) => ({ isValid: password === 'secret', credentials: { user, scope: user === 'admin' ? ['admin'] : [] } })
    });
};

const inspector = { path: '/pulse', auth: { strategy: 'basic', scope: 'admin' } };

const cleanup = driverUrl ? () => { } : teardown(lab);


// ---- Child: drive Chromium through the page and print what it showed ----

drive('HAPI_PULSE_INSPECTOR_URL', { viewport: { width: 1280, height: 900 }, httpCredentials: { username: 'admin', password: 'secret' } }, async (tab, url) => {

    const pageErrors: string[] = [];
    const consoleErrors: string[] = [];
    tab.on('pageerror', (err: Error) => pageErrors.push(err.message));
    tab.on('console', (message: { type(): string; text(): string }) => message.type() === 'error' && consoleErrors.push(message.text()));
    await tab.goto(url);
    const text = (selector: string) => tab.locator(selector).innerText();
    const waitText = (selector: string, expected: string) => tab.waitForFunction(([sel, value]: [string, string]) => document.querySelector(sel)!.textContent!.includes(value), [selector, expected], { timeout: 10000 });

    await tab.click('#token');
    await waitText('#status', 'Got a token');
    await tab.click('#connect');
    await waitText('#status', 'Connected as socket');
    const status = await text('#status');
    const socketId = status.replace('Connected as socket ', '');

    await tab.fill('#sub', '/news');
    await tab.click('#subscribe');
    await waitText('#status', 'Subscribed to /news');
    await tab.evaluate(() => fetch('/control/publish'));
    await waitText('#frames', '"type":"pub"');

    await tab.fill('#path', '/whoami');
    await tab.click('#request');
    await waitText('#status', 'Request answered 200');

    await tab.fill('#sub', '/room/1');                       // a path with presence: the operator view shows its members
    await tab.click('#subscribe');
    await waitText('#status', 'Subscribed to /room/1');

    await waitText('#sockets', socketId);
    await waitText('#paths', '/room/1');
    await tab.waitForTimeout(1200);                           // one more refresh: the frames settle
    if (process.env.HAPI_PULSE_INSPECTOR_SCREENSHOT) {
        await tab.screenshot({ path: process.env.HAPI_PULSE_INSPECTOR_SCREENSHOT, fullPage: true });
    }

    const frames = await tab.$$eval('#frames tr', (rows: HTMLTableRowElement[]) => rows.map((row) => Array.from(row.cells, (cell) => cell.textContent)));
    const sockets = await tab.$$eval('#sockets tr', (rows: HTMLTableRowElement[]) => rows.map((row) => Array.from(row.cells, (cell) => cell.textContent)));
    const paths = await tab.$$eval('#paths tr', (rows: HTMLTableRowElement[]) => rows.map((row) => Array.from(row.cells, (cell) => cell.textContent)));
    return { socketId, frames, sockets, paths, pageErrors, consoleErrors, subs: await text('#subs') };
});


// ---- Tests ----

const skip = !driverUrl && chromiumSkipped('the inspector page test');

describe('Inspector', () => {

    it('is off unless asked for, and demands an auth setting', async () => {

        const plain = await server();
        expect(plain.lookup('x')).to.be.null();
        expect((await plain.inject('/pulse')).statusCode).to.equal(404);

        await expect(server({ inspector: { path: '/pulse' } })).to.reject(/"inspector.auth" is required: an auth strategy/);
        await expect(server({ inspector: { path: 'pulse', auth: false } })).to.reject(/inspector.path/);
        await expect(server({ inspector: { path: '/pulse/', auth: false } })).to.reject(/inspector.path/);
        await expect(server({ inspector: { path: '/pulse', auth: 42 } })).to.reject(/inspector.auth/);
        await expect(server({ inspector: { path: '/pulse', auth: false, recentDisconnects: -1 } })).to.reject(/recentDisconnects/);
        await expect(server({ inspector: false })).to.not.reject();
    });

    it('refuses requests without the credentials its auth setting demands', async () => {

        const srv = await server({ inspector }, 'pulse', withUsers);
        await srv.start();
        cleanup(() => srv.stop());

        for (const path of ['/pulse', '/pulse/state', '/pulse/client.js', '/pulse/inspector.js']) {
            const anonymous = await fetch(srv.info.uri + path);
            expect(anonymous.status, path).to.equal(401);
            expect(await anonymous.text()).to.not.include('hapi-pulse');
            expect((await fetch(srv.info.uri + path, { headers: { authorization: basic('admin', 'wrong') } })).status, path).to.equal(401);
            expect((await fetch(srv.info.uri + path, { headers: { authorization: basic('john') } })).status, path).to.equal(403);        // no admin scope
            expect((await fetch(srv.info.uri + path, { headers: { authorization: basic('admin') } })).status, path).to.equal(200);
        }
    });

    it('serves the page, its script and the browser client, with headers that keep the page to itself', async () => {

        const srv = await server({ inspector }, 'pulse', withUsers);
        await srv.start();
        cleanup(() => srv.stop());

        const headers = { authorization: basic('admin') };
        const page = await fetch(srv.info.uri + '/pulse', { headers });
        expect(page.headers.get('content-type')).to.equal('text/html; charset=utf-8');
        expect(page.headers.get('content-security-policy')).to.include("default-src 'none'");
        expect(page.headers.get('content-security-policy')).to.include("connect-src 'self'");
        expect(page.headers.get('cache-control')).to.equal('no-store');
        const html = await page.text();
        expect(html).to.include('<script src="/pulse/client.js"></script>');
        expect(html).to.include('<script src="/pulse/inspector.js"></script>');

        const client = await fetch(srv.info.uri + '/pulse/client.js', { headers });
        expect(client.headers.get('content-type')).to.equal('application/javascript; charset=utf-8');
        expect(Buffer.from(await client.arrayBuffer()).equals(Fs.readFileSync(bundlePath))).to.be.true();

        const script = await (await fetch(srv.info.uri + '/pulse/inspector.js', { headers })).text();
        expect(script).to.include('var base = "/pulse";');
        expect(script).to.not.include('innerHTML');
    });

    it('is never reachable through a socket\'s tunnel, whatever its credentials', async () => {

        const srv = await server({ inspector, auth: { type: 'direct', route: 'basic' } }, 'pulse', withUsers);
        await srv.start();
        cleanup(() => srv.stop());

        const client = new Nes.Client(url(srv));
        await client.connect({ auth: { headers: { authorization: basic('admin') } } });
        cleanup(() => client.disconnect());
        for (const path of ['/pulse', '/pulse/state', '/pulse/client.js']) {
            await expect(client.request(path)).to.reject(/Not Found/);
        }
    });

    it('serves the operator state of the node after real traffic', async () => {

        const srv = await server({ inspector: { ...inspector, recentDisconnects: 2, maxListed: 2 }, auth: { type: 'direct', route: { strategy: 'basic', mode: 'optional' }, index: true }, limits: { maxSubscriptions: 2 } }, 'pulse', withUsers);
        srv.subscription('/item/{id}', { auth: { mode: 'optional' } });
        srv.subscription('/news');
        srv.subscription('/room/{id}', { auth: { mode: 'optional' }, presence: true });
        await srv.start();
        cleanup(() => srv.stop());

        const auth = (user: string) => ({ headers: { authorization: basic(user) } });
        const john = await Peer.open(url(srv));
        await john.hello({ auth: auth('john'), subs: ['/item/5', '/news'] });
        const jane = await Peer.open(url(srv));
        await jane.hello({ auth: auth('jane'), subs: ['/item/5'] });
        const jane2 = await Peer.open(url(srv));
        await jane2.hello({ auth: auth('jane') });
        expect((await john.request({ type: 'sub', id: 2, path: '/item/6' })).statusCode).to.equal(429);
        const anonymous = await Peer.open(url(srv));
        await anonymous.hello();
        const room = await Peer.open(url(srv));                                 // presence: jane twice (one member), one anonymous socket
        await room.hello({ subs: ['/room/1'] });
        for (const [peer, id] of [[jane, 3], [jane2, 4]] as const) {
            expect((await peer.request({ type: 'sub', id, path: '/room/1' })).statusCode).to.not.exist();
        }

        for (const code of [4100, 4101, 4102]) {
            const leaving = await Peer.open(url(srv));
            await leaving.hello();
            leaving.ws.close(code, `bye ${code}`);
            await leaving.closedWith();
        }

        await until(() => srv.pulseStats().sockets === 5);
        const state = await (await fetch(srv.info.uri + '/pulse/state', { headers: { authorization: basic('admin') } })).json();

        expect(state.node).to.equal({ id: srv.info.id });
        expect(state.auth).to.equal({ type: 'direct', endpoint: '/nes/auth' });
        expect(state.metrics).to.equal({ exporting: false });
        expect(state.totals).to.equal(srv.pulseStats());
        expect(state.totals).to.include({ sockets: 5, users: 2, topics: 3, subscriptions: 6 });

        expect(state.sockets.total).to.equal(5);
        expect(state.sockets.shown).to.have.length(2);                          // maxListed
        expect(state.sockets.shown[0]).to.include({ user: 'john', remoteAddress: '127.0.0.1', subscriptions: 2, inFlight: 0 });
        expect(state.sockets.shown[0].id).to.be.a.string();
        expect(state.sockets.shown[0].connectedAt as number).to.be.within(Date.now() - 60000, Date.now());
        expect(state.sockets.shown[1]).to.include({ user: 'jane', subscriptions: 2 });
        expect(state.users).to.equal({ total: 2, shown: [{ user: 'jane', sockets: 2 }, { user: 'john', sockets: 1 }] });
        expect(state.paths).to.equal({
            total: 3, shown: [                                                  // maxListed: the two most subscribed
                { path: '/room/1', route: '/room/{id}', subscribers: 3, presence: { members: 1, anonymous: 1 } },
                { path: '/item/5', route: '/item/{id}', subscribers: 2, presence: null }
            ]
        });

        expect(state.limits).to.include({ maxSubscriptions: 1, maxInFlight: 0 });
        expect(state.upgrades).to.include({ origin: 0 });
        expect(state.traffic.hello).to.include({ received: 8, sent: 8 });
        expect(state.traffic.sub).to.include({ received: 3, sent: 2 });
        expect(state.traffic.error).to.include({ sent: 1 });

        // The newest first, two kept; the close code and reason the client sent
        expect(state.disconnects).to.have.length(2);
        expect(state.disconnects.map((d: any) => [d.code, d.reason, d.user])).to.equal([[4102, 'bye 4102', null], [4101, 'bye 4101', null]]);
        expect(state.disconnects[0].duration as number).to.be.within(0, 60000);
        expect(state.disconnects[0].at as number).to.be.within(Date.now() - 60000, Date.now());

        for (const peer of [john, jane, jane2, anonymous, room]) {
            peer.close();
        }
    });

    it('says whether metrics are exported', async () => {

        const provider = new MeterProvider();
        cleanup(() => provider.shutdown());
        const srv = await server({ inspector: { path: '/ops/pulse', auth: false }, metrics: { meterProvider: provider }, auth: false });
        await srv.start();
        cleanup(() => srv.stop());
        const state = await (await fetch(srv.info.uri + '/ops/pulse/state')).json();             // auth: false, as the application said
        expect(state.metrics).to.equal({ exporting: true });
        expect(state.auth).to.be.null();
        expect(state.disconnects).to.equal([]);
    });

    it('connects, subscribes, shows every frame and the operator view in Chromium', { skip, timeout: 60000 }, async () => {

        requireChromium();

        const srv = await server({ inspector, auth: { type: 'token', route: 'basic' }, heartbeat: false }, 'pulse', withUsers);
        srv.subscription('/news');
        srv.subscription('/room/{id}', { presence: true });
        srv.route([
            { method: 'GET', path: '/whoami', options: { auth: 'basic', handler: (request) => request.auth.credentials } },
            { method: 'GET', path: '/control/publish', options: { auth: false, handler: async () => (await srv.publish('/news', { headline: 'hello from the server' }), null) } }
        ]);

        await srv.start();
        cleanup(() => srv.stop());

        const screenshot = process.env.HAPI_PULSE_INSPECTOR_SCREENSHOT;
        const results = await runDriver(__filename, 'HAPI_PULSE_INSPECTOR_URL', `${srv.info.uri}/pulse`, 50000);
        expect(results.pageErrors).to.equal([]);
        expect(results.consoleErrors).to.equal([]);
        expect(results.subs).to.equal('/news /room/1');                         // innerText: the two spaces shown as one

        const frames: string[][] = results.frames;
        for (const [time] of frames) {
            expect(time).to.match(/^\d\d:\d\d:\d\d\.\d\d\d$/);
        }

        const sent = frames.filter(([, direction]) => direction === '\u2192').map(([, , frame]) => JSON.parse(frame!));
        const received = frames.filter(([, direction]) => direction === '\u2190').map(([, , frame]) => JSON.parse(frame!));
        expect(sent.map((frame) => frame.type)).to.equal(['hello', 'sub', 'request', 'sub']);
        expect(sent[0].auth).to.be.a.string();                                                  // the token the page fetched
        expect(received.map((frame) => frame.type)).to.equal(['hello', 'sub', 'pub', 'request', 'sub']);
        expect(received[2]).to.equal({ type: 'pub', path: '/news', message: { headline: 'hello from the server' } });
        expect(received[3].payload).to.include({ user: 'admin' });

        const socket = results.sockets.find((row: string[]) => row[0] === results.socketId);
        expect(socket.slice(1, 3)).to.equal(['admin', '127.0.0.1']);
        expect(socket[4]).to.equal('2');                                                       // subscriptions
        expect(results.paths).to.equal([['/news', '/news', '1', '-'], ['/room/1', '/room/{id}', '1', '1']]);       // presence: admin, a member
        if (screenshot) {
            expect(Fs.existsSync(screenshot)).to.be.true();
        }
    });
});
