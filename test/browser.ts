// The browser bundle (dist/browser/hapi-pulse.min.js) in headless Chromium against a real server: token auth,
// a request, a subscription, and recovery from a server-side close. The page records what happens; the test reads it.
//
// Chromium is driven from a child process running this same file (HAPI_PULSE_BROWSER_URL set): playwright-core
// defines process-wide globals that cannot be removed (signal-exit's emitter) and that lab would report as leaks.

import * as Fs from 'fs';
import * as Path from 'path';

import * as Code from '@hapi/code';
import * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';


const driverUrl = process.env.HAPI_PULSE_BROWSER_URL;

const { expect } = Code;
export const lab = Lab.script({ schedule: !driverUrl });
const { before, describe, it } = lab;

const Basic = require('@hapi/basic');

import { chromiumSkipped, drive, requireChromium, runDriver } from './chromium';
import { tap } from './wiretap';

const bundlePath = Path.join(__dirname, '..', 'browser', 'hapi-pulse.min.js');

// As in test/client.ts: the suite runs against @hapi/nes and against this package's plugin
let flavour: 'nes' | 'pulse' = 'nes';
const plugin = () => (flavour === 'pulse' ? require('../lib') : require('@hapi/nes'));

// The page runs the whole scenario; /control/* routes make the server publish or drop the socket on cue.
const page = `<!doctype html>
<html><head><meta charset="utf-8"><script src="/hapi-pulse.min.js"></script></head><body><script>
window.results = { connects: 0, disconnects: [], messages: [], errors: [], ids: [] };
const until = (condition) => new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => condition() ? resolve() : Date.now() - started > 5000 ? reject(new Error('Timed out')) : setTimeout(check, 10);
    check();
});

(async () => {

    const auth = await fetch('/nes/auth', { headers: { authorization: 'Basic ' + btoa('alice:secret') } });
    const { token } = await auth.json();

    const client = new HapiPulse.Client('ws://' + location.host);
    client.onConnect = () => { results.connects++; results.ids.push(client.id); };
    client.onDisconnect = (willReconnect, log) => results.disconnects.push(log);
    client.onError = (err) => results.errors.push(err.type + ': ' + err.message);
    await client.connect({ auth: token, delay: 50, maxDelay: 200 });

    results.whoami = (await client.request('/whoami')).payload;
    results.isPulse = new HapiPulse.PulseError('x', 'user').isPulse;
    results.nesGlobal = typeof nes.Client === 'function' && nes.Client === HapiPulse.Client;
    await client.subscribe('/news', (message, flags) => results.messages.push([message, flags]));

    await fetch('/control/publish?n=1');
    await until(() => results.messages.length === 1);

    await fetch('/control/drop');
    await until(() => results.connects === 2);
    results.subscriptions = client.subscriptions();

    await fetch('/control/publish?n=2');
    await until(() => results.messages.length === 2);
    await client.disconnect();
})().catch((err) => { results.failed = String(err && err.message || err); }).then(() => { results.done = true; });
</script></body></html>`;


// ---- Child: drive Chromium and print the page's results as JSON ----

drive('HAPI_PULSE_BROWSER_URL', {}, async (tab, url) => {

    const pageErrors: string[] = [];
    tab.on('pageerror', (err: Error) => pageErrors.push(err.message));
    await tab.goto(url);
    await tab.waitForFunction(() => (window as any).results.done, null, { timeout: 15000 });
    const results = await tab.evaluate(() => (window as any).results);
    return { ...results, pageErrors };
});


// ---- Test ----

const skip = !driverUrl && chromiumSkipped('the browser client tests');

// The same suite against a stock @hapi/nes 14 server and against this package's plugin.
for (const kind of ['nes', 'pulse'] as const) {
    describe(`Browser bundle against ${kind === 'nes' ? '@hapi/nes' : 'hapi-pulse'}`, () => {

        before(() => {

            flavour = kind;
        });


        it('connects with a token, requests, subscribes and survives a server-side close', { skip, timeout: 30000 }, async () => {

            requireChromium();

            expect(Fs.existsSync(bundlePath), `${bundlePath} missing: run npm run build`).to.be.true();

            const server = Hapi.server({ host: '127.0.0.1', port: 0 });
            await server.register(Basic);
            server.auth.strategy('basic', 'basic', {
                validate: (_request: unknown, username: string, password: string) => ({ isValid: password === 'secret', credentials: { user: username } })
            });

            await server.register({ plugin: plugin(), options: { auth: { type: 'token', route: 'basic' }, heartbeat: false } });
            const nes = server as any;
            nes.subscription('/news');

            let drops = 0;
            server.route([
                { method: 'GET', path: '/', options: { auth: false, handler: (_request, h) => h.response(page).type('text/html') } },
                { method: 'GET', path: '/hapi-pulse.min.js', options: { auth: false, handler: (_request, h) => h.response(Fs.readFileSync(bundlePath)).type('application/javascript') } },
                { method: 'GET', path: '/whoami', options: { auth: 'basic', handler: (request) => request.auth.credentials } },
                { method: 'GET', path: '/control/publish', options: { auth: false, handler: (request) => (nes.publish('/news', { n: Number(request.query.n) }), null) } },
                {
                    method: 'GET', path: '/control/drop', options: {
                        auth: false, handler: async () => {

                            const sockets: any[] = [];
                            nes.eachSocket((socket: any) => sockets.push(socket));
                            drops += sockets.length;
                            await Promise.all(sockets.map((socket) => socket.disconnect()));
                            return null;
                        }
                    }
                }
            ]);

            await server.start();

            try {
                const results = await runDriver(__filename, 'HAPI_PULSE_BROWSER_URL', `http://127.0.0.1:${server.info.port}/`, 25000);
                expect(results.failed).to.not.exist();
                expect(results.pageErrors).to.equal([]);
                expect(results.whoami).to.equal({ user: 'alice' });
                expect(results.isPulse).to.be.true();
                expect(results.nesGlobal).to.be.true();
                expect(drops).to.equal(1);
                expect(results.connects).to.equal(2);
                expect(results.subscriptions).to.equal(['/news']);
                expect(results.messages).to.equal([[{ n: 1 }, {}], [{ n: 2 }, {}]]);
                expect(results.disconnects).to.have.length(2);
                expect(results.disconnects[0]).to.include({ willReconnect: true, wasRequested: false });
                expect(results.disconnects[1]).to.include({ willReconnect: false, wasRequested: true });
                expect(results.ids[0]).to.be.a.string();
                expect(results.ids[1]).to.be.a.string();
                expect(results.ids[1]).to.not.equal(results.ids[0]);
                expect(results.errors).to.equal([]);
            }
            finally {
                await server.stop({ timeout: 100 });
            }
        });
    });
}

// Compression: Chromium negotiates permessage-deflate on its own. The page receives a small publish (sent plain), a
// catalogue page (compressed on the thread-free path) and a large one (deflated on the thread pool), a compressed
// reply, and sends a large message itself (Chromium compresses what it sends).
const compressedPage = `<!doctype html>
<html><head><meta charset="utf-8"><script src="/hapi-pulse.min.js"></script></head><body><script>
window.results = { messages: [], errors: [] };
const until = (condition) => new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => condition() ? resolve() : Date.now() - started > 5000 ? reject(new Error('Timed out')) : setTimeout(check, 10);
    check();
});

(async () => {

    const probe = new WebSocket('ws://' + location.host);
    await new Promise((resolve) => { probe.onopen = resolve; });
    results.extensions = probe.extensions;
    probe.close();

    const client = new HapiPulse.Client('ws://' + location.host);
    client.onError = (err) => results.errors.push(err.type + ': ' + err.message);
    await client.connect();
    await client.subscribe('/news', (message) => results.messages.push(message));
    await fetch('/control/publish');
    await until(() => results.messages.length === 3);
    results.reply = (await client.request('/catalogue/4000')).payload;
    results.echoed = (await client.message('e'.repeat(100000))).payload;
    await client.disconnect();
})().catch((err) => { results.failed = String(err && err.message || err); }).then(() => { results.done = true; });
</script></body></html>`;

const catalogue = (bytes: number, seed: number): { items: object[] } => {

    const items: object[] = [];
    for (let i = 0; JSON.stringify({ items }).length < bytes; ++i) {
        items.push({ id: seed * 1000 + i, name: `Item ${i}`, price: (i * 37) % 1000, tags: ['new', i % 2 ? 'sale' : 'regular'] });
    }

    return { items };
};

describe('Browser with compression on (hapi-pulse)', () => {

    it('negotiates permessage-deflate and receives compressed publishes and replies', { skip, timeout: 30000 }, async () => {

        requireChromium();

        const server = Hapi.server({ host: '127.0.0.1', port: 0 });
        await server.register({ plugin: require('../lib'), options: { compression: true, heartbeat: false, onMessage: (_socket: unknown, message: string) => ({ length: message.length }) } });
        const nes = server as any;
        nes.subscription('/news');
        const large = catalogue(200 * 1024, 3);
        server.route([
            { method: 'GET', path: '/', handler: (_request, h) => h.response(compressedPage).type('text/html') },
            { method: 'GET', path: '/hapi-pulse.min.js', handler: (_request, h) => h.response(Fs.readFileSync(bundlePath)).type('application/javascript') },
            { method: 'GET', path: '/catalogue/{n}', handler: (request) => catalogue(Number(request.params.n), 2) },
            {
                method: 'GET', path: '/control/publish', handler: () => {

                    nes.publish('/news', { n: 1 });
                    nes.publish('/news', catalogue(3000, 1));
                    nes.publish('/news', large);
                    return null;
                }
            }
        ]);

        const wires = tap(server);
        await server.start();

        try {
            const results = await runDriver(__filename, 'HAPI_PULSE_BROWSER_URL', `http://127.0.0.1:${server.info.port}/`, 25000);
            expect(results.failed).to.not.exist();
            expect(results.pageErrors).to.equal([]);
            expect(results.errors).to.equal([]);
            expect(results.extensions).to.equal('permessage-deflate; server_no_context_takeover');
            expect(results.messages).to.equal([{ n: 1 }, catalogue(3000, 1), large]);
            expect(results.reply).to.equal(catalogue(4000, 2));
            expect(results.echoed).to.equal({ length: 100000 });

            const sockets = wires.filter((wire) => wire.isWebSocket);
            expect(sockets).to.have.length(2);                                 // the probe, then the client
            expect(sockets[1]!.handshake).to.include('\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover');
            const client = sockets[1]!;
            expect(client.find('"n":1').compressed).to.be.false();
            const page = client.find('"id":1000');
            expect(page.compressed).to.be.true();
            expect(page.wire).to.be.below(0.35 * Buffer.byteLength(page.text));
            const big = client.find('"id":3000');
            expect(big.compressed).to.be.true();
            expect(big.wire).to.be.below(0.35 * Buffer.byteLength(big.text));
            expect(client.find('"id":2000').compressed).to.be.true();          // the reply
        }
        finally {
            await server.stop({ timeout: 100 });
        }
    });
});
