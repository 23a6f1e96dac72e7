// The module rules, read from the sources' imports (type-only ones too): the protocol imports nothing of ours,
// the client only the protocol, nothing under server/ reaches brokers/, nothing imports the entry point, and
// the socket does not reach the listener (it declares the host interface it needs).

import * as Fs from 'node:fs';
import * as Path from 'node:path';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';
import * as Ts from 'typescript';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const libDir = Path.join(__dirname, '..', '..', 'lib');

// Every .ts file under lib/ (declarations aside), as paths relative to lib/ without the extension.
const modules = (dir = libDir): string[] => {

    const found: string[] = [];
    for (const entry of Fs.readdirSync(dir, { withFileTypes: true })) {
        const full = Path.join(dir, entry.name);
        if (entry.isDirectory()) {
            found.push(...modules(full));
        }
        else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
            found.push(Path.relative(libDir, full).slice(0, -3).split(Path.sep).join('/'));
        }
    }

    return found.sort();
};

// The modules of ours that `name` imports, exports from or requires, resolved to names like modules() gives.
const importsOf = (name: string): string[] => {

    const source = Fs.readFileSync(Path.join(libDir, name + '.ts'), 'utf8');
    const specifiers = Ts.preProcessFile(source, true, true).importedFiles.map((file) => file.fileName);
    const ours = specifiers.filter((specifier) => specifier.startsWith('.'));
    return ours.map((specifier) => {

        const resolved = Path.posix.join(Path.posix.dirname(name), specifier);
        return Fs.existsSync(Path.join(libDir, resolved + '.ts')) ? resolved : Path.posix.join(resolved, 'index');
    });
};

// Everything `name` reaches, directly or through other modules of ours.
const reachedFrom = (name: string): string[] => {

    const reached = new Set<string>();
    const pending = [name];
    while (pending.length) {
        for (const imported of importsOf(pending.pop()!)) {
            if (!reached.has(imported)) {
                reached.add(imported);
                pending.push(imported);
            }
        }
    }

    return [...reached];
};

describe('module structure', () => {

    it('reads the imports of every module, type-only and re-exports included', () => {

        const all = modules();
        expect(all).to.include(['index', 'protocol', 'client', 'server/listener', 'server/socket']);
        expect(importsOf('index')).to.include(['protocol', 'client', 'server/listener']);
        for (const name of all) {
            for (const imported of importsOf(name)) {
                expect(all, `${name} imports ${imported}`).to.include(imported);
            }
        }
    });

    it('keeps the protocol free of imports of ours', () => {

        expect(importsOf('protocol')).to.equal([]);
    });

    it('lets the client import the protocol only', () => {

        expect([...new Set(importsOf('client'))]).to.equal(['protocol']);
    });

    it('keeps every module under server/ away from brokers/, directly or through another module', () => {

        for (const name of modules().filter((module) => module.startsWith('server/'))) {
            const brokers = reachedFrom(name).filter((module) => module.startsWith('brokers/'));
            expect(brokers, name).to.equal([]);
        }
    });

    it('lets nothing import the entry point', () => {

        for (const name of modules()) {
            expect(importsOf(name), name).to.not.include('index');
        }
    });

    it('keeps the socket from reaching the listener, directly or through another module', () => {

        expect(reachedFrom('server/socket')).to.not.include('server/listener');
    });
});
