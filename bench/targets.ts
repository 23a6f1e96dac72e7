// The implementations compared in every run. `server` names a module under servers/, `proto` the wire protocol the
// load client speaks to it (see load.ts).

import Fs from 'node:fs';
import Path from 'node:path';

export type Proto = 'nes' | 'sio';

export interface Target {
    readonly name: string;
    readonly label: string;
    readonly proto: Proto;
    // Why the target cannot run in this checkout, or null when it can.
    unavailable(): string | null;
}

const pulseBuild = Path.join(__dirname, '..', 'lib', 'index.js');
const baseBuild = process.env.BENCH_BASE ? Path.resolve(process.env.BENCH_BASE, 'dist', 'lib', 'index.js') : null;

export const targets: readonly Target[] = [
    {
        name: 'pulse',
        label: 'hapi-pulse',
        proto: 'nes',
        unavailable: () => Fs.existsSync(pulseBuild) ? null : `not available: ${Path.relative(process.cwd(), pulseBuild)} is missing (lib/index.ts not built yet)`
    },
    // Only with BENCH_BASE=<another checkout, built>: hapi-pulse before a change, beside it in the same run.
    ...(baseBuild ? [{
        name: 'pulse-base',
        label: 'hapi-pulse (BENCH_BASE)',
        proto: 'nes' as const,
        unavailable: () => Fs.existsSync(baseBuild) ? null : `not available: ${baseBuild} is missing (build that checkout first)`
    }] : []),
    { name: 'nes', label: '@hapi/nes 14', proto: 'nes', unavailable: () => null },
    { name: 'socketio', label: 'socket.io 4', proto: 'sio', unavailable: () => null },
    { name: 'ws-string', label: 'raw ws, string per socket', proto: 'nes', unavailable: () => null },
    { name: 'ws-preframed', label: 'raw ws, pre-framed + batched', proto: 'nes', unavailable: () => null },
    {
        name: 'pulse-deflate',
        label: 'hapi-pulse, compression on',
        proto: 'nes',
        unavailable: () => Fs.existsSync(pulseBuild) ? null : `not available: ${Path.relative(process.cwd(), pulseBuild)} is missing (lib/index.ts not built yet)`
    },
    { name: 'socketio-deflate', label: 'socket.io 4, perMessageDeflate', proto: 'sio', unavailable: () => null }
];

export function targetByName(name: string): Target {

    const target = targets.find((t) => t.name === name);
    if (!target) {
        throw new Error(`Unknown target ${name}`);
    }

    return target;
}
