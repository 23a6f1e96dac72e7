// The package as applications get it: which entry loads what, the tarball npm publishes installed into a fresh
// project (and the folder, and a git clone), and the public types compiled by a consumer under every module
// resolution TypeScript offers.

import { execFile, execFileSync } from 'node:child_process';
import * as Fs from 'node:fs';
import * as Os from 'node:os';
import * as Path from 'node:path';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';
import * as Ts from 'typescript';

import { moduleSettings, typeCheck } from './typecheck';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { after, before, describe, it } = lab;

const root = Path.join(__dirname, '..', '..');
const libDir = Path.join(root, 'dist', 'lib');
const manifest = JSON.parse(Fs.readFileSync(Path.join(root, 'package.json'), 'utf8'));

// The modules a fresh process has loaded after requiring `file`.
const loadedBy = (file: string): string[] => {

    const script = `require(${JSON.stringify(file)}); console.log(JSON.stringify(Object.keys(require.cache)));`;
    return JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }));
};

const run = (command: string, args: string[], cwd: string, timeout = 480000): Promise<string> => new Promise((resolve, reject) => {

    execFile(command, args, { cwd, timeout, encoding: 'utf8', env: { ...process.env, npm_config_update_notifier: 'false' } }, (err, stdout, stderr) => {

        return err ? reject(new Error(`${command} ${args.join(' ')} failed: ${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout + stderr);
    });
});

const npm = (args: string[], cwd: string) => run('npm', [...args, '--prefer-offline', '--no-audit', '--no-fund'], cwd);

describe('entries', () => {

    it('the main entry and the client entry never load @redis/client; hapi-pulse/redis does', () => {

        const redis = (modules: string[]) => modules.filter((file) => file.includes(Path.join('node_modules', '@redis')));
        expect(redis(loadedBy(Path.join(libDir, 'index.js')))).to.equal([]);
        expect(redis(loadedBy(Path.join(libDir, 'client.js')))).to.equal([]);
        expect(redis(loadedBy(Path.join(libDir, 'redis.js')))).to.not.equal([]);

        const Pulse = require(Path.join(libDir, 'index.js'));
        expect(Pulse.RedisBroker).to.not.exist();
        expect(require(Path.join(libDir, 'redis.js')).RedisBroker).to.be.a.function();
    });

    it('npm start compiles the library and the demo only, not the tests and benchmarks', () => {

        expect(manifest.scripts.start as string).to.startWith('npm run build:demo && ');
        expect(manifest.scripts['build:demo'] as string).to.startWith('tsc -p tsconfig.demo.json && ');
        const config = Ts.getParsedCommandLineOfConfigFile(Path.join(root, 'tsconfig.demo.json'), {}, { ...Ts.sys, onUnRecoverableConfigFileDiagnostic: () => { } })!;
        const folders = new Set(config.fileNames.map((file) => Path.relative(root, file).split(Path.sep)[0]));
        expect([...folders].sort()).to.equal(['examples', 'lib']);
    });

    it('declares @redis/client an optional peer dependency and leaves no install script unreviewed', async () => {

        expect(manifest.dependencies['@redis/client']).to.not.exist();
        expect(manifest.peerDependencies['@redis/client']).to.exist();
        expect(manifest.peerDependenciesMeta['@redis/client']).to.equal({ optional: true });
        expect(await run('npm', ['install-scripts', 'ls'], root)).to.include('No packages with unreviewed install scripts');
    });
});

// A server and a client from the installed package: a request over the socket and a publish delivered.
const smoke = `'use strict';
const Hapi = require('@hapi/hapi');
const Pulse = require('hapi-pulse');
const { Client } = require('hapi-pulse/client');
const { RedisBroker } = require('hapi-pulse/redis');
const Fs = require('fs');

const main = async () => {

    const server = Hapi.server({ host: '127.0.0.1', port: 0 });
    await server.register(Pulse.plugin);
    server.route({ method: 'GET', path: '/hi', handler: (request) => ({ socket: request.socket !== null }) });
    server.subscription('/news');
    await server.start();

    const client = new Client('ws://127.0.0.1:' + server.info.port);
    await client.connect();
    const reply = (await client.request('/hi')).payload;
    let deliver;
    const message = new Promise((resolve) => {

        deliver = resolve;
    });

    await client.subscribe('/news', (update) => deliver(update));
    await server.publish('/news', { n: 1 });
    const esm = await import('hapi-pulse/client');
    console.log(JSON.stringify({
        reply,
        message: await message,
        redis: typeof RedisBroker,
        esm: esm.Client === Client,
        browser: Fs.statSync(require.resolve('hapi-pulse/browser')).size > 1000
    }));
    await client.disconnect();
    await server.stop();
};

main().catch((err) => {

    console.error(err);
    process.exit(1);
});
`;

const expectSmoke = async (project: string) => {

    Fs.writeFileSync(Path.join(project, 'smoke.js'), smoke);
    const output = await run(process.execPath, ['smoke.js'], project, 20000);
    expect(JSON.parse(output)).to.equal({ reply: { socket: true }, message: { n: 1 }, redis: 'function', esm: true, browser: true });
};

// A project of its own in the temporary directory, with @hapi/hapi and the optional peer installed beside `spec`.
// npm runs a git dependency's `prepare` (which builds dist/) only when the project allows it.
const project = async (name: string, spec: string, extra: string[] = []): Promise<string> => {

    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), `hapi-pulse-${name}-`));
    Fs.writeFileSync(Path.join(dir, 'package.json'), JSON.stringify({ name: `consumer-${name}`, private: true, allowScripts: { 'hapi-pulse': true } }));
    await npm(['install', ...extra, spec, `@hapi/hapi@${manifest.devDependencies['@hapi/hapi']}`, `@redis/client@${manifest.devDependencies['@redis/client']}`], dir);
    return dir;
};

// PULSE_SKIP_INSTALLS=1 leaves out the three installs (~200 s) in local runs that touch no packaging; .ci/run never sets it.
const skipInstalls = process.env.PULSE_SKIP_INSTALLS === '1';

describe('installed package', { timeout: 600000, skip: skipInstalls }, () => {

    const made: string[] = [];
    const projects: Record<'tarball' | 'folder' | 'git', string> = { tarball: '', folder: '', git: '' };

    // The three installs at once: most of their time is npm waiting on the disk and the cache.
    before({ timeout: 600000 }, async () => {

        const out = Fs.mkdtempSync(Path.join(Os.tmpdir(), 'hapi-pulse-pack-'));
        const clone = Fs.mkdtempSync(Path.join(Os.tmpdir(), 'hapi-pulse-clone-'));
        made.push(out, clone);

        // dist/ is built by `npm test`; --ignore-scripts: `prepare` would build it again under the running suite
        const tarball = async () => {

            const [packed] = JSON.parse(await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', out], root));
            return project('tarball', Path.join(out, packed.filename));
        };

        // A git URL: npm clones it, installs its devDependencies and runs `prepare`, as for github:owner/repo
        const git = async () => {

            await run('git', ['clone', '--quiet', '--no-hardlinks', root, clone], root);
            return project('git', `git+file://${clone}`);
        };

        [projects.tarball, projects.folder, projects.git] = await Promise.all([tarball(), project('folder', root, ['--install-links']), git()]);
        made.push(...Object.values(projects));
    });

    after(() => {

        for (const dir of made) {
            Fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it('runs a server and a client from the registry tarball', async () => {

        await expectSmoke(projects.tarball);
    });

    it('ships compiled code, declarations, the browser bundle and source maps that embed their sources', () => {

        const installed = Path.join(projects.tarball, 'node_modules', 'hapi-pulse');
        const files = (dir: string): string[] => Fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => (entry.isDirectory() ? files(Path.join(dir, entry.name)) : [Path.join(dir, entry.name)]));
        const shipped = files(installed).map((file) => Path.relative(installed, file));
        expect(shipped).to.include(['dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/lib/client.js', 'dist/lib/redis.js', 'dist/browser/hapi-pulse.min.js', 'protocol.md']);
        expect(shipped.filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts'))).to.equal([]);

        const maps = shipped.filter((file) => file.endsWith('.js.map'));
        expect(maps.length).to.be.above(5);
        for (const file of maps) {
            const map = JSON.parse(Fs.readFileSync(Path.join(installed, file), 'utf8'));
            expect(map.sourcesContent, file).to.have.length(map.sources.length);
            expect(map.sourcesContent.every((source: string) => source.length > 0), file).to.be.true();
        }
    });

    it('runs a server and a client installed from the folder', async () => {

        await expectSmoke(projects.folder);
    });

    it('builds itself when installed from a git URL (prepare), then runs a server and a client', async () => {

        expect(Fs.existsSync(Path.join(projects.git, 'node_modules', 'hapi-pulse', 'dist', 'lib', 'index.js'))).to.be.true();
        await expectSmoke(projects.git);
    });

    // ---- Types, as a consumer compiles them: --strict, no skipLibCheck, each module resolution ----

    const consumer = {
        'server.ts': `
import * as Hapi from '@hapi/hapi';
import { plugin } from 'hapi-pulse';
import type { PluginOptions, Socket } from 'hapi-pulse';

interface Item { owner: string; price: number }

export const start = async (): Promise<Hapi.Server> => {

    const server = Hapi.server();
    const options: PluginOptions = { heartbeat: { interval: 15000, timeout: 5000 } };
    await server.register({ plugin, options });
    server.subscription<Item, { muted: string[] }>('/item/{id}', {
        filter: (path, message, { credentials, internal }) => message.price > 0 && !internal?.muted.includes(credentials?.user)
    });
    // @ts-expect-error: the message type flows from the type parameter
    server.subscription<Item>('/other/{id}', { filter: (path, message) => message.colour === 'red' });
    await server.publish('/item/5', { owner: 'john', price: 1 }, { internal: { muted: [] } });
    await server.eachSocket((socket: Socket) => socket.send('hi'));
    return server;
};
`,
        'client.ts': `
import { Client, PulseError } from 'hapi-pulse/client';
import type { SubscriptionFlags } from 'hapi-pulse/client';

export const use = async (): Promise<number> => {

    const client = new Client('ws://localhost:3000', { recovery: true });
    client.onError = (err: PulseError) => console.error(err.type);
    await client.connect({ auth: { headers: { authorization: 'Bearer john' } } });
    await client.subscribe<{ price: number }>('/item/5', (message, flags: SubscriptionFlags) => console.log(message.price, flags.revoked));
    const { payload } = await client.request<{ price: number }>('/item/5');
    return payload.price;
};
`,
        'esm.mts': `
import { plugin } from 'hapi-pulse';
import { Client } from 'hapi-pulse/client';

export const pair: [typeof plugin, Client] = [plugin, new Client('ws://localhost:3000')];
`,
        'redis.ts': `
import { RedisBroker } from 'hapi-pulse/redis';
import type { RedisBrokerOptions } from 'hapi-pulse/redis';

const options: RedisBrokerOptions = { url: 'redis://127.0.0.1:6379', prefix: 'app:' };
export const broker = new RedisBroker(options);
`
    };

    const compile = (dir: string, files: string[], options: Ts.CompilerOptions): { errors: string[]; loaded: string[] } => {

        return typeCheck(dir, files, { ...options, target: Ts.ScriptTarget.ES2022, lib: ['lib.es2022.d.ts'], types: [] });
    };

    for (const [name, options] of Object.entries(moduleSettings)) {
        it(`type-checks a consumer of the main, client and redis entries under moduleResolution ${name} --strict`, () => {

            const dir = Path.join(projects.tarball, `types-${name}`);
            Fs.mkdirSync(dir, { recursive: true });
            for (const [file, source] of Object.entries(consumer)) {
                Fs.writeFileSync(Path.join(dir, file), source);
            }

            const esm = name === 'node16' || name === 'nodenext' ? ['esm.mts'] : [];          // an ES module importing the CommonJS package
            const main = compile(dir, ['server.ts', 'client.ts', ...esm], options);
            expect(main.errors).to.equal([]);
            expect(main.loaded.filter((file) => file.includes('@redis'))).to.equal([]);      // the main entry's types never pull Redis in

            // @redis/client's own declarations use default imports of node modules: esModuleInterop (implied by node16)
            expect(compile(dir, ['redis.ts'], { ...options, esModuleInterop: true }).errors).to.equal([]);
        });
    }
});
