// `npm start` runs dist/examples/server.js: it must serve, and a stock @hapi/nes client must connect. Its chat is
// proven in Chromium: two users in two browser contexts, on two nodes over Redis (one node without Redis, outside
// CI). Chromium is driven from a child process running this same file (HAPI_PULSE_CHAT_URLS set), as in browser.ts.

import { randomBytes } from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import * as Fs from 'node:fs';
import * as Net from 'node:net';
import { join } from 'node:path';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { deleteRedisKeys, Nes, redisAvailable, redisUrl } from './helpers';

const chatUrls = process.env.HAPI_PULSE_CHAT_URLS;
const { expect } = Code;
const lab = Lab.script({ schedule: !chatUrls });
export { lab };
const { describe, it } = lab;

const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const chromium = Fs.existsSync(chromiumPath);
const ci = process.env.CI === 'true';

// Starts the demo; resolves with its http address once it prints it.
const demo = (env: Record<string, string>): Promise<{ child: ChildProcess; address: string }> => {

    const child = spawn(process.execPath, [join(__dirname, '..', 'examples', 'server.js')], { env: { ...process.env, PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    return new Promise((resolve, reject) => {

        let output = '';
        const timer = setTimeout(() => reject(new Error('example did not start: ' + output)), 10000);
        child.stdout!.on('data', (chunk) => {

            output += chunk;
            const match = /listening on (http:\/\/\S+)/.exec(output);
            if (match) {
                clearTimeout(timer);
                resolve({ child, address: match[1]! });
            }
        });
    });
};

const stopDemo = async (child: ChildProcess): Promise<void> => {

    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
};

// The keys a demo run left under its own prefix (its recorded memberships have no ttl).
const forget = async (prefix: string): Promise<void> => {

    await deleteRedisKeys(prefix);
};

// ---- Child: two browser contexts, alice on the first URL and bob on the second; prints both logs as JSON ----

const chat = async (urls: string[]): Promise<void> => {

    const { chromium: browserType } = require('playwright-core');
    const browser = await browserType.launch({ executablePath: chromiumPath, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
    try {
        const pageErrors: string[] = [];
        const open = async (url: string) => {

            const context = await browser.newContext();
            const page = await context.newPage();
            page.on('pageerror', (err: Error) => pageErrors.push(err.message));
            page.on('console', (message: any) => {

                // The client's onError (a handler that threw, ...); not the browser's own request for /favicon.ico
                if (message.type() === 'error' && !message.location().url.endsWith('/favicon.ico')) {
                    pageErrors.push(message.text());
                }
            });
            await page.goto(url);
            return page;
        };

        const [alice, bob] = [await open(urls[0]!), await open(urls[1]!)];
        const seen = (page: any, text: string) => page.waitForFunction((expected: string) => (window as any).chat.log().includes(expected), text, { timeout: 15000 });
        const run = (page: any, script: string) => page.evaluate(script);
        const online = (page: any, text: string, timeout = 15000) => page.waitForFunction((expected: string) => (window as any).chat.online() === expected, text, { timeout });

        await run(alice, `chat.signIn('alice')`);
        await run(bob, `chat.signIn('bob')`);
        const rooms = await run(bob, `chat.rooms()`);

        // The online list: each user's alias and availability; bob picks another one in his page, alice sees it
        await online(alice, 'Alice: available, Bob: available');
        await bob.selectOption('#availability', 'busy');
        await online(alice, 'Alice: available, Bob: busy');
        await online(bob, 'Alice: available, Bob: busy');

        await run(bob, `chat.call('POST', '/rooms/dev/members')`);
        await seen(bob, 'joined #dev');
        await run(alice, `chat.call('POST', '/rooms/lobby/messages', { text: 'hi bob' })`);
        await seen(bob, '#lobby alice: hi bob');
        await run(alice, `chat.call('POST', '/users/bob/messages', { text: 'psst' })`);
        await seen(bob, 'private from alice to bob: psst');
        await run(bob, `chat.call('POST', '/me/drop')`);
        await seen(bob, 'disconnected, reconnecting');
        await run(alice, `chat.call('POST', '/rooms/lobby/messages', { text: 'while you were away' })`);
        await seen(alice, '#lobby alice: while you were away');
        await seen(bob, '#lobby alice: while you were away');
        const bobLog = await run(bob, 'chat.log()');
        const availability = await run(bob, `document.getElementById('availability').value`);

        // Bob closes his page: his socket closes and he leaves alice's list within two presence intervals (0.5 s
        // here); 5 s leaves room for a loaded machine
        await online(alice, 'Alice: available, Bob: busy');                 // still busy after his reconnection
        await bob.close();
        await online(alice, 'Alice: available', 5000);
        process.stdout.write(JSON.stringify({ rooms, alice: await run(alice, 'chat.log()'), bob: bobLog, availability, pageErrors }));
    }
    finally {
        await browser.close();
    }
};

if (chatUrls) {
    chat(JSON.parse(chatUrls)).catch((err) => {

        console.error(err);
        process.exitCode = 1;
    });
}

describe('example server', () => {

    it('serves the demo to a stock nes client', async () => {

        const child = spawn(process.execPath, [join(__dirname, '..', 'examples', 'server.js')], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] });
        try {
            const address = await new Promise<string>((resolve, reject) => {

                let output = '';
                const timer = setTimeout(() => reject(new Error('example did not start: ' + output)), 10000);
                child.stdout.on('data', (chunk) => {

                    output += chunk;
                    const match = /listening on (http:\/\/\S+)/.exec(output);
                    if (match) {
                        clearTimeout(timer);
                        resolve(match[1]!.replace(/^http/, 'ws'));
                    }
                });
            });

            const page = await (await fetch(address.replace(/^ws/, 'http') + '/')).text();
            expect(page).to.include('This page loads the browser bundle, connects over a WebSocket');        // says what it shows

            const client = new Nes.Client(address);
            await client.connect();
            expect((await client.request('/hello')).payload).to.equal({ hello: 'world', viaWebSocket: true });
            const tick = await new Promise<{ tick: number }>((resolve) => {

                client.subscribe('/clock/seconds', resolve);
            });

            expect(tick.tick).to.be.a.number();
            await client.disconnect();
        }
        finally {
            const exited = new Promise((resolve) => child.once('exit', resolve));
            child.kill('SIGTERM');
            await exited;
        }
    });

    it('chat: two users in two Chromium contexts, on two nodes over Redis: rooms, a private message, recovery, the online list', { skip: !chromium && !ci, timeout: 60000 }, async () => {

        if (!chromium) {
            throw new Error(`Chromium not installed at ${chromiumPath} (required when CI=true)`);
        }

        // Two nodes when there is a Redis (always under CI), one otherwise; keys under a prefix of this run only
        const prefix = `pulse-demo-test:${process.pid}:${randomBytes(6).toString('hex')}:`;
        const env: Record<string, string> = redisAvailable || ci ? { DEMO_REDIS_URL: redisUrl, DEMO_REDIS_PREFIX: prefix } : {};
        const nodes = [await demo(env)];
        try {
            nodes.push(env.DEMO_REDIS_URL ? await demo(env) : nodes[0]!);
            const urls = nodes.map((node) => node.address + '/chat');
            const output = await new Promise<string>((resolve, reject) => {

                execFile(process.execPath, [__filename], { env: { ...process.env, HAPI_PULSE_CHAT_URLS: JSON.stringify(urls) }, timeout: 50000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
            });

            const result = JSON.parse(output);
            expect(result.pageErrors).to.equal([]);
            expect(result.rooms).to.equal(['/room/lobby', '/dm', '/online']);       // joined at hello: recorded at startup
            expect(result.availability).to.equal('busy');
            expect(result.bob.split('\n').filter((line: string) => line === 'connected as bob').length).to.equal(2);
            expect(result.bob).to.include('joined #dev');
            expect(result.alice).to.not.include('joined #dev');                       // bob's room only
            expect(result.bob).to.include('private from alice to bob: psst');
            expect(result.bob.indexOf('#lobby alice: while you were away') as number).to.be.above(result.bob.lastIndexOf('disconnected, reconnecting') as number);
        }
        finally {
            for (const node of new Set(nodes)) {
                await stopDemo(node.child);
            }

            if (env.DEMO_REDIS_URL) {
                await forget(prefix);
            }
        }
    });

    it('prints one clear line and exits when its port is taken', async () => {

        const taken = Net.createServer();
        await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
        const { port } = taken.address() as Net.AddressInfo;
        try {
            const child = spawn(process.execPath, [join(__dirname, '..', 'examples', 'server.js')], { env: { ...process.env, PORT: `${port}` }, stdio: ['ignore', 'pipe', 'pipe'] });
            let stderr = '';
            child.stderr.on('data', (chunk) => {

                stderr += chunk;
            });

            const code = await new Promise((resolve) => child.once('exit', resolve));
            expect(code).to.equal(1);
            expect(stderr).to.equal(`Port ${port} is already in use: stop what listens there or set PORT (PORT=3001 npm start)\n`);
        }
        finally {
            await new Promise((resolve) => taken.close(resolve));
        }
    });
});
