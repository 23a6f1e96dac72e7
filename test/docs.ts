// Every code block of README.md and API.md runs here, as a reader would run it after copying it.
//
// Blocks of one document run in order, each as its own Node process in dist/docs/<doc>/, so that
// `require('hapi-pulse')` resolves through the package's own `exports` (self-reference) exactly as it does for
// an installed package. An HTML comment on the line before a fence says how the block is used:
//
//   <!-- test: server -->          stays up for the rest of the document; ready once it prints `listening on <url>`
//   <!-- test: browse "text" -->   (with server) open its URL in Chromium; ready once the page logs "text"
//   <!-- test: expect "text" -->   the block's output must contain "text"
//   <!-- test: file NAME -->       written to NAME beside the blocks (a page, a module) for later blocks
//   <!-- test: excerpt PATH -->    not runnable alone; PATH is the runnable example in examples/ that covers it
//
// Without a comment a block must exit 0 with nothing on stderr. `ts` blocks are type-checked with --strict
// (all of them in one program) and then run like `js` blocks. `sh` blocks may only name npm scripts that exist.
// The ports a block listens on or connects to are mapped to free ports (a preloaded hook on net), so that test
// runs in parallel never collide and the documents can say `port: 3000`.

import * as ChildProcess from 'node:child_process';
import * as Fs from 'node:fs';
import * as Net from 'node:net';
import * as Path from 'node:path';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';
import * as Ts from 'typescript';

import { chromiumSkipped, drive, requireChromium, runDriver } from './chromium';
import { skipWithoutRedis } from './helpers';

const driverUrl = process.env.HAPI_PULSE_DOCS_BROWSER;

const { expect } = Code;
export const lab = Lab.script({ schedule: !driverUrl });
const { describe, it } = lab;

const root = Path.join(__dirname, '..', '..');

interface Block {
    doc: string;
    line: number;
    section: string;
    lang: string;
    code: string;
    directive: { kind: string; arg: string } | null;
}

export const extract = (doc: string, text: string): Block[] => {

    const blocks: Block[] = [];
    const lines = text.split('\n');
    let section = '';
    for (let i = 0; i < lines.length; ++i) {
        if (/^## /.test(lines[i]!)) {
            section = lines[i]!.slice(3);
        }

        const open = /^(\s*)```(\S*)\s*$/.exec(lines[i]!);
        if (!open) {
            continue;
        }

        const indent = open[1]!.length;
        const start = i;
        const body: string[] = [];
        while (++i < lines.length && !/^\s*```\s*$/.test(lines[i]!)) {
            body.push(lines[i]!.slice(indent));
        }

        let before = start - 1;
        while (before >= 0 && lines[before]!.trim() === '') {
            --before;
        }

        const comment = before >= 0 ? /^\s*<!--\s*test:\s*(\w+)\s*(.*?)\s*-->\s*$/.exec(lines[before]!) : null;
        const directive = comment ? { kind: comment[1]!, arg: comment[2]!.replace(/^"(.*)"$/, '$1') } : null;
        blocks.push({ doc, line: start + 1, section, lang: open[2]!, code: body.join('\n') + '\n', directive });
    }

    return blocks;
};

const where = (block: Block) => `${block.doc}:${block.line}`;

// ---- Port mapping: a hook preloaded into every block process ----

const preload = `'use strict';
const Net = require('net');
const map = JSON.parse(process.env.HAPI_PULSE_DOCS_PORTS || '{}');
const remap = (port) => (port !== undefined && port !== null && map[String(port)] !== undefined ? map[String(port)] : port);
const listen = Net.Server.prototype.listen;
Net.Server.prototype.listen = function (...args) {
    if (args[0] && typeof args[0] === 'object') {
        args[0] = { ...args[0], port: remap(args[0].port) };
    }
    else {
        args[0] = remap(args[0]);
    }
    return listen.apply(this, args);
};
const connect = Net.Socket.prototype.connect;
Net.Socket.prototype.connect = function (...args) {
    const list = Array.isArray(args[0]) ? args[0] : args;
    if (list[0] && typeof list[0] === 'object') {
        list[0].port = remap(list[0].port);
    }
    else {
        list[0] = remap(list[0]);
    }
    return connect.apply(this, args);
};
`;

const freePort = (): Promise<number> => new Promise((resolve, reject) => {

    const probe = Net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {

        const { port } = probe.address() as Net.AddressInfo;
        probe.close(() => resolve(port));
    });
});

// Every number a block could use as a port (3000-9999, except Redis's) gets its own free port.
const portsOf = async (blocks: Block[]): Promise<Record<string, number>> => {

    const map: Record<string, number> = {};
    for (const block of blocks) {
        for (const match of block.code.matchAll(/\b([3-9]\d{3})\b/g)) {
            if (match[1] !== '6379' && !map[match[1]!]) {
                map[match[1]!] = await freePort();
            }
        }
    }

    return map;
};

// ---- Type-checking the TypeScript blocks ----

const typeCheck = (files: string[]): string[] => {

    const program = Ts.createProgram(files, {
        strict: true,
        noEmit: true,
        target: Ts.ScriptTarget.ES2022,
        module: Ts.ModuleKind.Node16,
        moduleResolution: Ts.ModuleResolutionKind.Node16,
        esModuleInterop: true,
        types: ['node'],
        lib: ['lib.es2022.d.ts', 'lib.dom.d.ts']
    });

    return Ts.getPreEmitDiagnostics(program).map((diagnostic) => {

        const at = diagnostic.file && diagnostic.start !== undefined ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start) : null;
        const file = diagnostic.file ? Path.basename(diagnostic.file.fileName) : '';
        return `${file}${at ? `:${at.line + 1}` : ''} ${Ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')}`;
    });
};

// ---- Running blocks ----

interface Running {
    block: Block;
    child: ChildProcess.ChildProcess;
    stdout: string;
    stderr: string;
    exited: Promise<number | null>;
}

const launch = (block: Block, file: string, env: NodeJS.ProcessEnv): Running => {

    const child = ChildProcess.spawn(process.execPath, ['--require', Path.join(Path.dirname(file), 'preload.js'), file], { cwd: Path.dirname(file), env, stdio: ['ignore', 'pipe', 'pipe'] });
    const running: Running = { block, child, stdout: '', stderr: '', exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))) };
    child.stdout!.on('data', (chunk) => {

        running.stdout += chunk;
    });
    child.stderr!.on('data', (chunk) => {

        running.stderr += chunk;
    });
    return running;
};

const report = (running: Running, what: string) => `${where(running.block)}: ${what}\n--- stdout\n${running.stdout}--- stderr\n${running.stderr}`;

// Resolves when `ready` holds on the output, rejects when the process exits first or time runs out.
const waitFor = async (running: Running, ready: (output: string) => boolean, timeout: number, what: string): Promise<void> => {

    const end = Date.now() + timeout;
    let exited = false;
    running.exited.then(() => {

        exited = true;
    });
    while (!ready(running.stdout)) {
        if (exited || Date.now() > end) {
            throw new Error(report(running, exited ? `exited before ${what}` : `timed out waiting for ${what}`));
        }

        await new Promise((resolve) => setTimeout(resolve, 20));
    }
};

const browse = (url: string): Promise<{ logs: string[]; errors: string[] }> => runDriver(__filename, 'HAPI_PULSE_DOCS_BROWSER', url, 60000);

const runDocument = async (doc: string): Promise<void> => {

    const blocks = extract(doc, Fs.readFileSync(Path.join(root, doc), 'utf8'));
    expect(blocks.length, `${doc} has no code blocks`).to.be.above(0);

    const dir = Path.join(root, 'dist', 'docs', Path.basename(doc, '.md'));
    Fs.rmSync(dir, { recursive: true, force: true });
    Fs.mkdirSync(dir, { recursive: true });
    Fs.writeFileSync(Path.join(dir, 'preload.js'), preload);

    const scripts = JSON.parse(Fs.readFileSync(Path.join(root, 'package.json'), 'utf8')).scripts;
    const env = { ...process.env, HAPI_PULSE_DOCS_PORTS: JSON.stringify(await portsOf(blocks)) };
    const files = new Map<Block, string>();
    let withoutRedis: string | null = null;           // the section skipped for want of Redis
    for (const [index, block] of blocks.entries()) {
        const kind = block.directive?.kind;
        if (withoutRedis === block.section || (block.code.includes('hapi-pulse/redis') && skipWithoutRedis(`${where(block)}: the blocks of "${block.section}"`))) {
            withoutRedis = block.section;
            continue;
        }

        expect(['server', 'browse', 'expect', 'file', 'excerpt', undefined], `${where(block)}: unknown directive ${kind}`).to.include(kind);
        if (kind === 'excerpt') {
            expect(block.directive!.arg, `${where(block)}: an excerpt names the example that covers it`).to.match(/^examples\/\S+\.ts$/);
            expect(Fs.existsSync(Path.join(root, block.directive!.arg)), `${where(block)}: ${block.directive!.arg} missing`).to.be.true();
            continue;
        }

        if (block.lang === 'sh') {
            for (const command of block.code.replace(/#.*$/gm, '').split(/&&|\n/).map((part) => part.trim()).filter(Boolean)) {
                const npm = /^npm (?:run )?(\S+)/.exec(command);
                expect(npm, `${where(block)}: only npm commands are allowed in sh blocks: ${command}`).to.exist();
                expect(['install', 'ci'].includes(npm![1]!) || scripts[npm![1]!] !== undefined, `${where(block)}: no npm script ${npm![1]}`).to.be.true();
            }

            continue;
        }

        expect(['js', 'ts', 'html'], `${where(block)}: code blocks are js, ts, html or sh (found "${block.lang}")`).to.include(block.lang);
        if (kind === 'file') {
            Fs.writeFileSync(Path.join(dir, block.directive!.arg), block.code);
            continue;
        }

        expect(block.lang, `${where(block)}: an html block is a file for another block`).to.not.equal('html');
        const file = Path.join(dir, `block-${index}-line-${block.line}.${block.lang}`);
        Fs.writeFileSync(file, block.code);
        files.set(block, file);
    }

    const typescript = [...files.values()].filter((file) => file.endsWith('.ts'));
    if (typescript.length) {
        expect(typeCheck(typescript), `${doc}: TypeScript blocks do not type-check`).to.equal([]);
    }

    const servers: Running[] = [];
    try {
        for (const [block, source] of files) {
            let file = source;
            if (block.lang === 'ts') {
                file = source.replace(/\.ts$/, '.js');
                Fs.writeFileSync(file, Ts.transpileModule(block.code, { compilerOptions: { module: Ts.ModuleKind.CommonJS, target: Ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText);
            }

            const running = launch(block, file, env);
            const kind = block.directive?.kind;
            if (kind === 'server' || kind === 'browse') {
                servers.push(running);
                await waitFor(running, (output) => /listening on https?:\/\/\S+/.test(output), 60000, '"listening on <url>"');
                if (kind === 'browse') {
                    const url = /listening on (https?:\/\/\S+)/.exec(running.stdout)![1]!;
                    const page = await browse(url + '/#' + encodeURIComponent(block.directive!.arg));
                    expect(page.errors, `${where(block)}: errors in the page`).to.equal([]);
                    expect(page.logs.join('\n'), `${where(block)}: the page never logged "${block.directive!.arg}"`).to.include(block.directive!.arg);
                }

                continue;
            }

            const timer = setTimeout(() => running.child.kill('SIGKILL'), 60000);
            const code = await running.exited;
            clearTimeout(timer);
            await new Promise((resolve) => setImmediate(resolve));
            expect(code, report(running, `exit code ${code}`)).to.equal(0);
            expect(running.stderr, report(running, 'wrote to stderr')).to.equal('');
            if (kind === 'expect') {
                expect(running.stdout, report(running, `output lacks "${block.directive!.arg}"`)).to.include(block.directive!.arg);
            }
        }

        for (const server of servers) {
            expect(server.stderr, report(server, 'wrote to stderr')).to.equal('');
            expect(server.child.exitCode, report(server, 'exited early')).to.equal(null);
        }
    }
    finally {
        for (const server of servers) {
            server.child.kill('SIGKILL');
            await server.exited;
        }
    }
};


// ---- Child: open a page in Chromium, collect its console until it logs the expected text ----

drive('HAPI_PULSE_DOCS_BROWSER', {}, async (tab, url) => {

    const expected = decodeURIComponent(new URL(url).hash.slice(1));
    const logs: string[] = [];
    const errors: string[] = [];
    const seen = new Promise<void>((resolve) => {

        tab.on('console', (message: { type(): string; text(): string; location(): { url: string } }) => {

            if (message.location().url.endsWith('/favicon.ico')) {            // asked by Chromium, not by the page
                return;
            }

            (message.type() === 'error' ? errors : logs).push(message.text());
            if (message.text().includes(expected)) {
                resolve();
            }
        });
    });

    tab.on('pageerror', (err: Error) => errors.push(err.message));
    await tab.goto(url);
    await Promise.race([seen, new Promise((resolve) => setTimeout(resolve, 40000))]);
    return { logs, errors };
});


// ---- The documents ----

const needsBrowser = (doc: string) => extract(doc, Fs.readFileSync(Path.join(root, doc), 'utf8')).some((block) => block.directive?.kind === 'browse');

describe('documentation', () => {

    for (const doc of ['README.md', 'API.md']) {
        it(`runs every code block of ${doc}`, { timeout: 300000 }, async () => {

            if (needsBrowser(doc)) {
                if (chromiumSkipped(`the ${doc} code blocks`)) {
                    return;
                }

                requireChromium();
            }

            await runDocument(doc);
        });
    }

    it('finds fenced blocks, their language and the directive before them', () => {

        const blocks = extract('x.md', 'text\n<!-- test: expect "hi there" -->\n\n```js\nconsole.log(1);\n```\n## B\n  ```ts\n  const a = 1;\n  ```\n');
        expect(blocks).to.equal([
            { doc: 'x.md', line: 4, section: '', lang: 'js', code: 'console.log(1);\n', directive: { kind: 'expect', arg: 'hi there' } },
            { doc: 'x.md', line: 8, section: 'B', lang: 'ts', code: 'const a = 1;\n', directive: null }
        ]);
    });
});
