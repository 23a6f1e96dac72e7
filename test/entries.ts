// The package's entry points as an installed @hapi/nes application meets them: resolved by package name from a
// separate directory (node_modules/hapi-pulse is a link to this repository), in CommonJS, ESM and TypeScript.

import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import * as Vm from 'node:vm';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';
import * as Esbuild from 'esbuild';

import { moduleSettings, typeCheck } from './typecheck';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { after, before, describe, it } = lab;

const root = join(__dirname, '..', '..');
const run = promisify(execFile);

let app: string;

before(() => {

    app = mkdtempSync(join(tmpdir(), 'pulse-entries-'));
    mkdirSync(join(app, 'node_modules', '@hapi'), { recursive: true });
    symlinkSync(root, join(app, 'node_modules', 'hapi-pulse'), 'dir');
    symlinkSync(join(root, 'node_modules', '@hapi', 'nes'), join(app, 'node_modules', '@hapi', 'nes'), 'dir');
    symlinkSync(join(root, 'node_modules', '@hapi', 'hapi'), join(app, 'node_modules', '@hapi', 'hapi'), 'dir');
});

after(() => rmSync(app, { recursive: true, force: true }));

// Runs a script written into the application directory; resolves with what it printed (parsed as JSON).
const script = async (name: string, source: string): Promise<any> => {

    writeFileSync(join(app, name), source);
    const { stdout } = await run(process.execPath, [name], { cwd: app, timeout: 20000 });
    return JSON.parse(stdout);
};

// An application written for @hapi/nes: plugin and client from the main module, as nes's documentation shows.
// Every observable result is printed; socket ids and other per-run values are left out.
const nesApp = (load: string, module: 'cjs' | 'esm'): string => `
${module === 'cjs' ? `const Hapi = require('@hapi/hapi');\nconst Nes = require('${load}');` : `import Hapi from '@hapi/hapi';\nimport * as Nes from '${load}';\nimport { plugin, Client } from '${load}';`}

const main = async () => {

    const out = {};
    const server = Hapi.server({ host: '127.0.0.1', port: 0 });
    await server.register(${module === 'cjs' ? 'Nes' : '{ plugin }'});
    server.route({ method: 'POST', path: '/h', handler: (request) => ({ got: request.payload, socket: request.socket !== null }) });
    server.subscription('/item/{id}', { filter: (path, message, options) => message.n !== 2 });
    await server.start();

    const client = new ${module === 'cjs' ? 'Nes.Client' : 'Client'}('ws://127.0.0.1:' + server.info.port);
    out.clientType = typeof ${module === 'cjs' ? 'Nes.Client' : 'Client'};
    out.namespaceClient = Nes.Client === ${module === 'cjs' ? 'Nes.Client' : 'Client'};
    const updates = [];
    client.onUpdate = (message) => updates.push(message);
    await client.connect();
    out.connected = typeof client.id;
    out.response = await client.request({ method: 'POST', path: '/h', payload: { a: 1 } }).then((res) => [res.statusCode, res.payload]);
    out.missing = await client.request('/missing').catch((err) => [err.message, err.type, err.isNes, err.statusCode, err.data]);

    const received = [];
    await client.subscribe('/item/5', (message, flags) => received.push([message, flags]));
    out.subscriptions = client.subscriptions();
    await server.publish('/item/5', { n: 1 });
    await server.publish('/item/5', { n: 2 });
    await server.publish('/item/6', { n: 3 });
    await server.publish('/item/5', { n: 4 });
    await server.broadcast('all');
    await new Promise((resolve) => setTimeout(resolve, 100));
    out.received = received;
    out.updates = updates;
    out.notFound = await client.subscribe('/nothing', () => { }).catch((err) => [err.message, err.type, err.statusCode, err.path]);

    await client.disconnect();
    await server.stop();
    process.stdout.write(JSON.stringify(out));
};

main();
`;

describe('Entry points', () => {

    it('runs an @hapi/nes application unchanged with only the package name replaced (CommonJS)', async () => {

        const nes = await script('nes.js', nesApp('@hapi/nes', 'cjs'));
        const pulse = await script('pulse.js', nesApp('hapi-pulse', 'cjs'));
        expect(nes.received).to.equal([[{ n: 1 }, {}], [{ n: 4 }, {}]]);          // the application did run
        expect(nes.clientType).to.equal('function');
        expect(pulse).to.equal(nes);
    });

    it('runs an @hapi/nes application unchanged with only the package name replaced (ESM named imports)', async () => {

        const nes = await script('nes.mjs', nesApp('@hapi/nes', 'esm'));
        const pulse = await script('pulse.mjs', nesApp('hapi-pulse', 'esm'));
        expect(nes.response).to.equal([200, { got: { a: 1 }, socket: true }]);
        expect(pulse).to.equal(nes);
    });

    it('resolves every client path to the one client, without loading the server, ws or Redis', async () => {

        const loaded = await script('client-paths.js', `
            const paths = ['hapi-pulse/client', 'hapi-pulse/lib/client', 'hapi-pulse/lib/client.js'];
            const clients = paths.map((path) => require(path).Client);
            const modules = Object.keys(require.cache);
            const main = require('hapi-pulse');
            process.stdout.write(JSON.stringify({
                same: clients.every((Client) => typeof Client === 'function' && Client === main.Client),
                modules: modules.filter((file) => file.startsWith(${JSON.stringify(root)})).map((file) => file.replace(${JSON.stringify(root)}, '<root>'))
            }));
        `);

        expect(loaded.same).to.be.true();
        expect(loaded.modules).to.equal(['<root>/dist/lib/client.js', '<root>/dist/lib/protocol.js']);
    });

    it('bundles hapi-pulse/lib/client for a browser without the server, ws or Redis', () => {

        const metafile = Esbuild.buildSync({
            stdin: { contents: `import { Client } from 'hapi-pulse/lib/client';\nnew Client('ws://localhost');`, resolveDir: app },
            bundle: true,
            write: false,
            metafile: true,
            platform: 'browser',
            external: ['ws'],
            logLevel: 'silent'
        }).metafile;

        expect(Object.keys(metafile.inputs).map((file) => file.replace(/^.*\/dist\//, 'dist/')).sort()).to.equal(['<stdin>', 'dist/lib/client.js', 'dist/lib/protocol.js']);
    });

    it('runs without @opentelemetry/api installed: metrics off, the inspector still served', async () => {

        // The package as installed (its files, its dependencies), in a tree where the optional peer is absent
        const bare = mkdtempSync(join(tmpdir(), 'pulse-no-otel-'));
        try {
            const installed = join(bare, 'node_modules', 'hapi-pulse');
            for (const part of ['dist/lib', 'dist/browser', 'package.json']) {
                cpSync(join(root, part), join(installed, part), { recursive: true });
            }

            const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
            for (const name of [...Object.keys(manifest.dependencies), '@hapi/hapi']) {
                mkdirSync(dirname(join(bare, 'node_modules', name)), { recursive: true });
                symlinkSync(join(root, 'node_modules', name), join(bare, 'node_modules', name), 'dir');
            }

            writeFileSync(join(bare, 'app.js'), `
                const out = {};
                try {
                    require.resolve('@opentelemetry/api', { paths: [require.resolve('hapi-pulse')] });
                    out.resolvable = true;
                }
                catch (err) {
                    out.resolvable = err.code;
                }

                const Hapi = require('@hapi/hapi');
                const Pulse = require('hapi-pulse');
                const main = async () => {

                    const server = Hapi.server({ host: '127.0.0.1', port: 0 });
                    await server.register({ plugin: Pulse.plugin, options: { inspector: { path: '/pulse', auth: false } } });
                    server.subscription('/x');
                    await server.start();
                    const client = new Pulse.Client('ws://127.0.0.1:' + server.info.port);
                    await client.connect();
                    let deliver;
                    const got = new Promise((resolve) => {

                        deliver = resolve;
                    });
                    await client.subscribe('/x', (message) => deliver(message));
                    await server.publish('/x', 'delivered');
                    out.message = await got;
                    const state = await (await fetch(server.info.uri + '/pulse/state')).json();
                    out.exporting = state.metrics.exporting;
                    out.sockets = state.totals.sockets;
                    out.loaded = Object.keys(require.cache).filter((file) => file.includes('opentelemetry'));
                    await client.disconnect();
                    await server.stop();
                    process.stdout.write(JSON.stringify(out));
                };

                main();
            `);

            const { stdout } = await run(process.execPath, ['app.js'], { cwd: bare, timeout: 20000 });
            expect(JSON.parse(stdout)).to.equal({ resolvable: 'MODULE_NOT_FOUND', message: 'delivered', exporting: false, sockets: 1, loaded: [] });
        }
        finally {
            rmSync(bare, { recursive: true, force: true });
        }
    });

    it('imports the client paths as ESM', async () => {

        const loaded = await script('client-paths.mjs', `
            import { Client as A } from 'hapi-pulse/client';
            import { Client as B } from 'hapi-pulse/lib/client';
            import { Client as C } from 'hapi-pulse/lib/client.js';
            import { Client, PulseError, plugin } from 'hapi-pulse';
            process.stdout.write(JSON.stringify([A === Client, B === Client, C === Client, typeof PulseError, plugin.name]));
        `);

        expect(loaded).to.equal([true, true, true, 'function', 'hapi-pulse']);
    });

    describe('browser bundle', () => {

        // Evaluates the bundle as a classic script in a fresh context with the given globals.
        const evaluate = (globals: Record<string, unknown>): Record<string, any> => {

            const context = Vm.createContext({ ...globals });
            context.self = context;
            Vm.runInContext(readFileSync(join(root, 'dist', 'browser', 'hapi-pulse.min.js'), 'utf8'), context);
            return context;
        };

        it('defines window.nes beside window.HapiPulse in a page', () => {

            const page = evaluate({});
            expect(page.nes.Client).to.be.a.function();
            expect(page.nes).to.shallow.equal(page.HapiPulse);
            expect(Object.keys(page.nes).sort()).to.equal(['Client', 'PulseError']);
        });

        it('defines an AMD module when a loader is present', () => {

            const defined: unknown[] = [];
            const define = (factory: () => unknown) => defined.push(factory());
            define.amd = {};
            const page = evaluate({ define });
            expect(page.nes).to.not.exist();
            expect((defined[0] as any).Client).to.be.a.function();
        });

        it('exports the client when loaded as CommonJS', () => {

            const module = { exports: {} as any };
            const page = evaluate({ module });
            expect(page.nes).to.not.exist();
            expect(module.exports.Client).to.be.a.function();
            expect(module.exports.Client).to.shallow.equal(page.HapiPulse.Client);
        });
    });

    describe('types', () => {

        // Type-checks `source` as an application file importing the package by name.
        const check = (source: string, resolution: 'node10' | 'node16' | 'bundler'): string[] => {

            const file = `check-${resolution}.ts`;
            writeFileSync(join(app, file), source);
            return typeCheck(app, [file], { ...moduleSettings[resolution], skipLibCheck: true, types: ['node'], typeRoots: [join(root, 'node_modules', '@types')] }).errors;
        };

        const typed = `
            import { Client, Nes, plugin } from 'hapi-pulse';
            import { Client as LibClient } from 'hapi-pulse/lib/client';
            import { Client as LibClientJs } from 'hapi-pulse/lib/client.js';
            import { Client as SubClient } from 'hapi-pulse/client';

            const clients: (typeof Client)[] = [LibClient, LibClientJs, SubClient];
            const client = new clients[0]!('ws://localhost');
            const options: Nes.ClientConnectOptions = { reconnect: true, delay: 10 };
            client.onDisconnect = (willReconnect: boolean, log: Nes.NesLog) => log.code;
            client.onError = (err: Nes.NesError) => err.isNes && err.type satisfies Nes.ErrorType;
            const handler: Nes.NesSubHandler = (message, flags) => flags.revoked;
            const request: Nes.ClientRequestOptions = { path: '/', method: 'POST' };
            const onConnection = (socket: Nes.Socket<{ room: string }>) => socket.app.room.length + socket.id.length;
            const subscription: Nes.SubscriptionOptions = { filter: () => true, auth: { mode: 'optional' } };
            const pluginOptions: Nes.PluginOptions = { heartbeat: false, onConnection: (socket: Nes.Socket) => socket.send('hi') };
            const each: Nes.EachSocketOptions = { subscription: '/a' };
            const publish: Nes.PublishOptions = { internal: 1 };
            const broadcast: Nes.BroadcastOptions = { user: 'john' };
            const auth: Nes.SocketAuthObject = { isAuthenticated: false, credentials: null, artifacts: null };
            const explanation: Nes.ErrorCodes[1006] = 'Abnormal closure';
            const response: Promise<Nes.NesReqRes<{ a: number }>> = client.request<{ a: number }>(request);
            export const all = [options, handler, onConnection, subscription, pluginOptions, each, publish, broadcast, auth, explanation, response, plugin];
        `;

        for (const resolution of ['node10', 'node16', 'bundler'] as const) {
            it(`resolves the main entry, the Nes namespace and every client path (moduleResolution ${resolution})`, () => {

                expect(check(typed, resolution)).to.equal([]);
            });
        }

        it('types request.socket and eachSocket as the nes socket API, none of the connection internals', () => {

            const internals = ['inFlight', 'subscriptions', 'user', 'catchups', 'upgradeHeaders', 'ready', 'close', 'deliver', 'sendPrepared', 'onFrame'];
            const source = `
                import type { Request, Server } from '@hapi/hapi';
                import type { Socket } from 'hapi-pulse';

                declare const server: Server;
                declare const request: Request;
                const use = (socket: Socket) => [socket.id.length, socket.app.anything, socket.auth.credentials, socket.auth.strategy, socket.info.remoteAddress,
                    socket.info['x-forwarded-for'], socket.server.info.id, socket.isOpen(), socket.send(1), socket.publish('/a', 1), socket.revoke('/a', null, { ignoreClose: true }),
                    socket.disconnect()];
                export const publicApi = [use(request.socket!), server.eachSocket(use)];
                export const hidden = [${internals.map((name) => `request.socket!.${name}`).join(', ')}];
            `;

            expect(check(source, 'node16')).to.equal(internals.map((name) => `check-node16.ts: Property '${name}' does not exist on type 'Socket'.`));
        });

        it('reports type errors in such a check (the check can fail)', () => {

            expect(check(`import { Client } from 'hapi-pulse/lib/client';\nexport const wrong: number = new Client('ws://x').id;`, 'node10')).to.equal([`check-node10.ts: Type 'string | null' is not assignable to type 'number'.\n  Type 'null' is not assignable to type 'number'.`]);
        });
    });
});
