// `npm start` runs dist/examples/server.js: it must serve, and a stock @hapi/nes client must connect.

import { spawn } from 'node:child_process';
import * as Net from 'node:net';
import { join } from 'node:path';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { Nes } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

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
