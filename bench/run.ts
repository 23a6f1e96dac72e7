// `npm run bench` → node dist/bench/run.js [--quick] [--only a,b] [--targets x,y] [--repeats n]
// (or BENCH_QUICK=1, BENCH_ONLY=..., BENCH_TARGETS=..., BENCH_REPEATS=...)
//
// Orchestrator: for every repetition, scenario and target it forks one server child (server-main.js <target>) and
// one load child (load.js), drives them over IPC, kills both, and finally prints and writes the report.
// A full run (no --quick, no --only, no --targets) writes bench/RESULTS.md; any other run writes
// dist/bench/RESULTS.last.md.

import { fork, type ChildProcess } from 'node:child_process';
import Fs from 'node:fs';
import Os from 'node:os';
import Path from 'node:path';

import { Peer } from './ipc';
import { scenarios, sessions, type Ctx, type Scenario, type Session, type SessionKind } from './scenarios';
import { human, median, ratio, table } from './stats';
import { targetByName, targets, type Target } from './targets';

// Options

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(`--${name}`);
const option = (name: string, env: string): string | undefined => {

    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : process.env[env];
};

const quick = flag('quick') || process.env.BENCH_QUICK === '1';
const only = option('only', 'BENCH_ONLY')?.split(',').filter(Boolean) ?? [];
const onlyTargets = option('targets', 'BENCH_TARGETS')?.split(',').filter(Boolean) ?? [];
const repeats = Number(option('repeats', 'BENCH_REPEATS') ?? (quick ? 1 : 3));
const full = !quick && !only.length && !onlyTargets.length && repeats >= 3;

// Opt-in scenarios (many sockets) run only when --only names them.
const selected = scenarios.filter((s) => (only.length ? only.some((o) => s.id.startsWith(o)) : !s.optIn));
// A full-size run of only the opt-in scenarios, every target: its report is kept too (bench/RESULTS-many.md).
const fullOptIn = !quick && !onlyTargets.length && selected.every((s) => s.optIn);
if (!selected.length) {
    console.error(`No scenario matches --only ${only.join(',')}; scenarios: ${scenarios.map((s) => s.id).join(', ')}`);
    process.exit(1);
}

// Extra node flags for the children, e.g. BENCH_SERVER_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile a server.
const serverArgs = process.env.BENCH_SERVER_ARGS?.split(' ').filter(Boolean) ?? [];
const clientArgs = process.env.BENCH_CLIENT_ARGS?.split(' ').filter(Boolean) ?? [];
// BENCH_CHILD_LOG=<directory>: every child's stdout and stderr also go to a file there (the report keeps only a tail).
const childLog = process.env.BENCH_CHILD_LOG;

const repoRoot = Path.join(__dirname, '..', '..');
const started = Date.now();
const hardLimitMs = (selected.some((s) => s.optIn) ? 30 : 15) * 60_000;      // Whole-run watchdog (opt-in scenarios take longer)

// Machine load: how busy the whole machine was during the run, and how much of that was us (this process and its
// waited-for children). Other sessions' work on a shared machine shows up as the difference. Linux only.

interface CpuSnapshot { machineBusy: number; machineTotal: number; ours: number }

function cpuSnapshot(): CpuSnapshot | null {

    try {
        const fields = Fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
        const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = fields;
        const self = Fs.readFileSync('/proc/self/stat', 'utf8');
        const after = self.slice(self.lastIndexOf(')') + 2).split(' ').map(Number);
        // after[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17
        const ours = after[11]! + after[12]! + after[13]! + after[14]!;
        const busy = user + nice + system + irq + softirq + steal;
        return { machineBusy: busy, machineTotal: busy + idle + iowait, ours };
    }
    catch {
        return null;
    }
}

const cpuAtStart = cpuSnapshot();

function machineLoad(): string {

    const end = cpuSnapshot();
    if (!cpuAtStart || !end) {
        return 'unknown';
    }

    const total = end.machineTotal - cpuAtStart.machineTotal;
    const busy = end.machineBusy - cpuAtStart.machineBusy;
    const ours = end.ours - cpuAtStart.ours;
    const cores = Os.cpus().length;
    const pct = (ticks: number) => `${((100 * ticks) / total).toFixed(0)}%`;
    return `machine ${pct(busy)} busy over the run (of ${cores} cores), the benchmark's own processes ${pct(ours)}, other processes ≈ ${pct(Math.max(0, busy - ours))}`;
}

// Children

const children = new Set<ChildProcess>();

function spawn(name: string, file: string, args: string[], execArgv: string[]): { peer: Peer; stderr: () => string } {

    const child = fork(Path.join(__dirname, file), args, { execArgv, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    children.add(child);
    child.once('exit', () => children.delete(child));
    let tail = '';
    const keep = (chunk: Buffer) => {

        tail = (tail + chunk.toString()).slice(-2000);
    };

    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    if (childLog) {                                                 // e.g. BENCH_SERVER_ARGS=--trace-gc-nvp
        const file = Fs.createWriteStream(Path.join(childLog, `${name.replace(/[^\w#-]+/g, '_')}.${child.pid}.log`));
        child.stdout!.pipe(file);
        child.stderr!.pipe(file);
    }

    return { peer: new Peer(name, child), stderr: () => tail.trim() };
}

function killAll(): void {

    for (const child of children) {
        child.kill('SIGKILL');
    }
}

const watchdog = setTimeout(() => {

    console.error(`\nBenchmark exceeded ${hardLimitMs / 60_000} minutes: killing children and exiting.`);
    killAll();
    process.exit(2);
}, hardLimitMs);
watchdog.unref();

process.on('SIGINT', () => {

    killAll();
    process.exit(130);
});

// Sessions: one server child and one load child, set up once, then handed to each scenario in turn.

interface Open {
    session: Session;
    close(): Promise<void>;
    stderr(): string;
}

// One load child and one server child per entry of kind.nodes() (default: one, default options), e.g. two
// hapi-pulse nodes sharing a Redis broker plus a memory-broker node. kind.teardown() runs after the children stop.

async function openSession(kind: SessionKind, target: Target): Promise<Open> {

    const state: Record<string, unknown> = {};
    const nodeOptions = kind.nodes?.(ctx, state) ?? [{}];
    const servers = nodeOptions.map((_, i) => spawn(`server(${target.name}${nodeOptions.length > 1 ? ` #${i}` : ''})`, 'server-main.js', [target.name], ['--expose-gc', ...serverArgs]));
    const loads = kind.loads?.(ctx) ?? 1;
    const clients = Array.from({ length: loads }, (_, i) => spawn(loads > 1 ? `load #${i}` : 'load', 'load.js', [], clientArgs).peer);
    let session: Session | null = null;
    const stderr = () => servers.map((s) => s.stderr()).filter(Boolean).join('\n');
    const close = async () => {

        await Promise.all([...clients.map((c) => c.stop()), ...servers.map((s) => s.peer.stop())]);
        await kind.teardown?.(ctx, session ?? { target, server: servers[0]!.peer, servers: servers.map((s) => s.peer), client: clients[0]!, clients, port: 0, ports: [], state })
            .catch((err: Error) => console.log(`    teardown (${kind.id}) failed: ${err.message}`));
    };

    try {
        await Promise.all([...servers.map((s) => s.peer.waitEvent('ready', 15_000)), ...clients.map((c) => c.waitEvent('ready', 15_000))]);
        const ports = await Promise.all(servers.map((s, i) => s.peer.call<{ port: number }>('listen', { ...nodeOptions[i] }, 15_000).then((r) => r.port)));
        session = { target, server: servers[0]!.peer, servers: servers.map((s) => s.peer), client: clients[0]!, clients, port: ports[0]!, ports, state };
        await kind.setup(ctx, session);
        return { session, close, stderr };
    }
    catch (err) {
        await close();
        throw withOutput(err, stderr());
    }
}

function withOutput(err: unknown, output: string): Error {

    const message = err instanceof Error ? err.message : String(err);
    return new Error(output ? `${message}\n      server output: ${output.split('\n').slice(-5).join('\n      ')}` : message);
}

const ctx: Ctx = {
    quick,
    log: (line) => console.log(line)
};

// Results

interface Cell {
    runs: Record<string, number>[];
    errors: string[];
    unavailable?: string;
}

const results = new Map<string, Map<string, Cell>>();

function cell(scenario: string, target: string): Cell {

    let byTarget = results.get(scenario);
    if (!byTarget) {
        byTarget = new Map();
        results.set(scenario, byTarget);
    }

    let entry = byTarget.get(target);
    if (!entry) {
        entry = { runs: [], errors: [] };
        byTarget.set(target, entry);
    }

    return entry;
}

function med(scenario: string, target: string, key: string): number {

    const entry = results.get(scenario)?.get(target);
    return entry ? median(entry.runs.map((r) => r[key] ?? NaN)) : NaN;
}

function activeTargets(scenario: Scenario): Target[] {

    return targets.filter((t) => scenario.targets.includes(t.name) && (!onlyTargets.length || onlyTargets.includes(t.name)));
}

// Goals from the issue, checked on medians

interface Goal {
    readonly text: string;
    check(): { value: string; pass: boolean; failWord?: string } | null;     // null: not measured in this run
}

// Correctness checks look at every run, not the median: one bad run is a FAIL.
function allRuns(scenario: string, key: string): number[] {

    return results.get(scenario)?.get('pulse')?.runs.map((r) => r[key] ?? NaN) ?? [];
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

const pulseMed = (scenario: string, key: string) => med(scenario, 'pulse', key);

function atLeast(text: string, scenario: string, key: string, parts: Array<[string, number]>): Goal {

    return {
        text,
        check: () => {

            const ours = pulseMed(scenario, key);
            if (!Number.isFinite(ours)) {
                return null;
            }

            const checks = parts.map(([target, factor]) => {

                const base = med(scenario, target, key);
                return { target, factor, base, ok: Number.isFinite(base) && ours >= factor * base };
            });

            return {
                value: checks.map((c) => `${ratio(ours, c.base)} ${c.target}`).join(', '),
                pass: checks.every((c) => c.ok)
            };
        }
    };
}

// Presence (issue 15, scenarios-presence.ts): a count that does not grow with the members, batched presence
// messages through a mass reconnection, and what presence adds to the CPU of that reconnection.
const presenceGoals: Goal[] = [
    {
        text: 'presence count (two nodes, Redis): count/s at 10k members ≥ 0.8× count/s at 1k (does not grow with the members)',
        check: () => {

            const ratioPar = pulseMed('presence-count', 'ratio');
            const ratioSeq = pulseMed('presence-count', 'seqRatio');
            return Number.isFinite(ratioPar) ? { value: `10k/1k = ${ratioPar.toFixed(2)}× (sequential ${ratioSeq.toFixed(2)}×)`, pass: ratioPar >= 0.8 } : null;
        }
    },
    {
        text: 'presence mass reconnection: server CPU per connection with presence ≤ 1.5× without',
        check: () => {

            const ratioCpu = pulseMed('presence-reconnect', 'ratio');
            return Number.isFinite(ratioCpu) ? {
                value: `${ratioCpu.toFixed(2)}× (${pulseMed('presence-reconnect', 'cpuOn').toFixed(3)} / ${pulseMed('presence-reconnect', 'cpuOff').toFixed(3)} ms)`,
                pass: ratioCpu <= 1.5
            } : null;
        }
    },
    {
        text: 'presence mass reconnection: the follower gets at most one message per batch interval (≪ one per socket) and ends with every member, every run',
        check: () => {

            const messages = allRuns('presence-reconnect', 'messages');
            const bound = allRuns('presence-reconnect', 'bound');
            const over = allRuns('presence-reconnect', 'overBound');
            const missing = allRuns('presence-reconnect', 'missing');
            return messages.length ? {
                value: `${messages.map((m) => m.toFixed(0)).join(' / ')} messages per reconnection (bound ${bound.map((b) => b.toFixed(0)).join(' / ')}), ` +
                    `${sum(over)} cycle(s) over the bound, ${Math.max(...missing)} member(s) missing`,
                pass: [...over, ...missing].every((v) => v === 0),
                failWord: 'FAIL'
            } : null;
        }
    }
];

const goals: Goal[] = [
    atLeast('fan-out 1k: delivered/s ≥ socket.io and ≥ 0.8× pre-framed ws', 'fanout-1k', 'rate', [['socketio', 1], ['ws-preframed', 0.8]]),
    atLeast('fan-out 5k: delivered/s ≥ socket.io and ≥ 0.8× pre-framed ws', 'fanout-5k', 'rate', [['socketio', 1], ['ws-preframed', 0.8]]),
    atLeast('targeted 5k: publishes/s ≥ 25× nes and ≥ socket.io', 'targeted-5k', 'rate', [['nes', 25], ['socketio', 1]]),
    ...['1k', '5k'].map((label): Goal => ({
        text: `compressed fan-out ${label}: delivered/s ≥ 10× socket.io compressed, CPU/delivery ≤ 1.5× ours uncompressed, bytes/delivery ≤ 0.35× uncompressed`,
        check: () => {

            const scenario = `deflate-${label}`;
            const ours = (key: string) => med(scenario, 'pulse-deflate', key);
            const plain = (key: string) => med(scenario, 'pulse', key);
            const sio = med(scenario, 'socketio-deflate', 'rate');
            if (!Number.isFinite(ours('rate'))) {
                return null;
            }

            return {
                value: `${ratio(ours('rate'), sio)} socketio-deflate, CPU ${ratio(ours('serverCpuUs'), plain('serverCpuUs'))} uncompressed, bytes ${ratio(ours('bytes'), plain('bytes'))} uncompressed`,
                pass: ours('rate') >= 10 * sio && ours('serverCpuUs') <= 1.5 * plain('serverCpuUs') && ours('bytes') <= 0.35 * plain('bytes')
            };
        }
    })),
    {
        // Raw pre-framed ws loses as much from 1k to 5k sockets (kernel and client cost per socket), so our own
        // 5k/1k ratio is judged against its ratio in the same run, not against a fixed 0.8.
        text: 'targeted: our 5k/1k publishes/s ratio within 20% of pre-framed ws\'s 5k/1k ratio',
        check: () => {

            const a = pulseMed('targeted-1k', 'rate');
            const b = pulseMed('targeted-5k', 'rate');
            const wsA = med('targeted-1k', 'ws-preframed', 'rate');
            const wsB = med('targeted-5k', 'ws-preframed', 'rate');
            if (![a, b, wsA, wsB].every(Number.isFinite)) {
                return null;
            }

            return { value: `5k/1k = ${ratio(b, a)}, ws-preframed ${ratio(wsB, wsA)}`, pass: b / a >= 0.8 * (wsB / wsA) };
        }
    },
    {
        text: 'storm: 10,000 publishes to 5k targeted sockets, all delivered, no client dropped',
        check: () => {

            const delivered = pulseMed('storm', 'delivered');
            const expected = pulseMed('storm', 'expected');
            const dropped = pulseMed('storm', 'dropped');
            return Number.isFinite(delivered) ? { value: `${delivered}/${expected} delivered, ${dropped} dropped`, pass: delivered === expected && dropped === 0 } : null;
        }
    },
    atLeast('request round trips at concurrency 32 ≥ 2× nes', 'request-c32', 'rate', [['nes', 2]]),
    {
        text: 'server heap per idle subscribed socket ≤ 1.3× raw ws',
        check: () => {

            const ours = pulseMed('memory', 'heap');
            const ws = med('memory', 'ws-string', 'heap');
            return Number.isFinite(ours) && Number.isFinite(ws) ? { value: `${(ours / 1024).toFixed(1)} KB = ${ratio(ours, ws)} ws`, pass: ours <= 1.3 * ws } : null;
        }
    },
    atLeast('connection setups/s ≥ nes', 'connect', 'rate', [['nes', 1]]),
    ...presenceGoals,
    {
        // "Does not grow with N": the largest count against the smaller one of the same run (many-small).
        text: 'many sockets: longest idle event-loop stall (heartbeats only) ≤ 50 ms at the largest N, and ≤ 1.5× the stall at the smaller N (one publish to all per socket at both)',
        check: () => {

            const stall = pulseMed('many', 'stallMax');
            const small = pulseMed('many-small', 'stallMax');
            if (!Number.isFinite(stall)) {
                return null;
            }

            const at = (scenario: string) => `${human(pulseMed(scenario, 'sockets'))} sockets`;
            const perSocket = (scenario: string) => `${pulseMed(scenario, 'allPerSocket').toFixed(1)} µs`;
            if (!Number.isFinite(small)) {
                return { value: `${stall.toFixed(0)} ms at ${at('many')}; no smaller N in this run`, pass: false };
            }

            // What the stall is made of: the collector's longest pause, and the longest hold with the collector taken out.
            const parts = (key: string) => `${pulseMed('many', key).toFixed(0)} ms and ${pulseMed('many-small', key).toFixed(0)} ms`;
            return {
                value: `${stall.toFixed(0)} ms at ${at('many')}, ${small.toFixed(0)} ms at ${at('many-small')} (${ratio(stall, small)}); of which longest GC pause ${parts('gcMax')}, longest hold with GC taken out ${parts('ownMax')}; to all per socket ${perSocket('many')} and ${perSocket('many-small')}`,
                pass: stall <= 50 && stall <= 1.5 * small
            };
        }
    },
    {
        text: 'many sockets: heap per idle subscribed socket ≤ 1.15× raw ws',
        check: () => {

            const ours = pulseMed('many', 'heap');
            const ws = med('many', 'ws-string', 'heap');
            return Number.isFinite(ours) && Number.isFinite(ws) ? { value: `${(ours / 1024).toFixed(2)} KB = ${ratio(ours, ws)} ws`, pass: ours <= 1.15 * ws } : null;
        }
    },
    {
        // Lower is better: our time over raw ws's, against the same ratio of the BENCH_BASE build (10% for noise).
        text: 'many sockets: one publish to all and setups/s no worse than BENCH_BASE (ratios to raw ws, 10% noise)',
        check: () => {

            const ws = (key: string) => med('many', 'ws-string', key);
            const base = (key: string) => med('many', 'pulse-base', key);
            const fan = pulseMed('many', 'allMs') / ws('allMs');
            const fanBase = base('allMs') / ws('allMs');
            const setup = pulseMed('many', 'setupRate') / ws('setupRate');
            const setupBase = base('setupRate') / ws('setupRate');
            if (![fan, fanBase, setup, setupBase].every(Number.isFinite)) {
                return null;
            }

            return {
                value: `to all ${fan.toFixed(2)}× ws (base ${fanBase.toFixed(2)}×), setups ${setup.toFixed(2)}× ws (base ${setupBase.toFixed(2)}×)`,
                pass: fan <= 1.1 * fanBase && setup >= setupBase / 1.1
            };
        }
    },
    {
        text: 'two nodes (Redis broker): every publish delivered to every socket on both nodes, every run',
        check: () => {

            const lost = allRuns('two-node', 'lost');
            return lost.length ? { value: `${sum(lost)} lost over ${lost.length} run(s)`, pass: lost.every((v) => v === 0), failWord: 'FAIL' } : null;
        }
    },
    {
        text: 'recovery: every client resumes with zero lost, zero duplicated, no `recovered: false`, every run',
        check: () => {

            const lost = allRuns('recovery', 'lost');
            const dup = allRuns('recovery', 'dup');
            const notRecovered = allRuns('recovery', 'notRecovered');
            const replayed = allRuns('recovery', 'replayed');
            return lost.length ? {
                value: `${sum(lost)} lost, ${sum(dup)} duplicated, ${sum(notRecovered)} not recovered (${sum(replayed)} replayed over ${lost.length} run(s))`,
                pass: [...lost, ...dup, ...notRecovered].every((v) => v === 0),
                failWord: 'FAIL'
            } : null;
        }
    }
];

// Report

function scenarioTable(scenario: Scenario): string {

    const baselines = scenario.baselines.filter((b) => activeTargets(scenario).some((t) => t.name === b));
    const header = ['target', scenario.headline.label, ...baselines.map((b) => `× ${b}`), ...scenario.metrics.map((m) => m.label), 'runs'];
    const rows = activeTargets(scenario).map((target) => {

        const entry = results.get(scenario.id)?.get(target.name);
        if (!entry || entry.unavailable || !entry.runs.length) {
            const why = entry?.unavailable ?? (entry?.errors.length ? `failed: ${entry.errors[0]!.split('\n')[0]}` : 'not run');
            return [target.label, why, ...baselines.map(() => ''), ...scenario.metrics.map(() => ''), ''];
        }

        const fmt = scenario.headline.format ?? human;
        const value = med(scenario.id, target.name, scenario.headline.key);
        const failures = entry.errors.length ? ` (+${entry.errors.length} failed)` : '';
        return [
            target.label,
            fmt(value),
            ...baselines.map((b) => (b === target.name ? '1×' : ratio(value, med(scenario.id, b, scenario.headline.key)))),
            ...scenario.metrics.map((m) => (m.format ?? human)(med(scenario.id, target.name, m.key))),
            entry.runs.map((r) => fmt(r[scenario.headline.key] ?? NaN)).join(' / ') + failures
        ];
    });

    return table(header, rows);
}

// One row per scenario headline, one column per target: the compact view for the README.

function summaryTable(): string {

    const shown = targets.filter((t) => !onlyTargets.length || onlyTargets.includes(t.name));
    const rows = selected.map((scenario) => [
        `${scenario.title} (${scenario.headline.label})`,
        ...shown.map((t) => {

            if (!scenario.targets.includes(t.name)) {
                return '';
            }

            const entry = results.get(scenario.id)?.get(t.name);
            if (entry?.unavailable) {
                return 'n/a';
            }

            return (scenario.headline.format ?? human)(med(scenario.id, t.name, scenario.headline.key));
        })
    ]);

    return table(['scenario', ...shown.map((t) => t.label)], rows);
}

// Scenarios a session kind could not run (e.g. no Redis), one loud line per reason: their rows only say "n/a".
function skippedLines(): string[] {

    const byReason = new Map<string, string[]>();
    for (const scenario of selected) {
        for (const [target, entry] of results.get(scenario.id) ?? []) {
            if (entry.unavailable && !targetByName(target).unavailable()) {
                byReason.set(entry.unavailable, [...(byReason.get(entry.unavailable) ?? []), scenario.id].filter((id, i, all) => all.indexOf(id) === i));
            }
        }
    }

    return [...byReason].map(([reason, ids]) => `**NOT MEASURED: ${ids.join(', ')}: ${reason}.**`);
}

function versionOf(pkg: string): string {

    try {
        return (JSON.parse(Fs.readFileSync(require.resolve(`${pkg}/package.json`, { paths: [repoRoot] }), 'utf8')) as { version: string }).version;
    }
    catch {
        return '?';
    }
}

function report(): string {

    const cpus = Os.cpus();
    const minutes = ((Date.now() - started) / 60_000).toFixed(1);
    const lines: string[] = [
        '# hapi-pulse benchmark results',
        '',
        `- Machine: ${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ${(Os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${Os.type()} ${Os.release()}`,
        `- Node ${process.version}; @hapi/hapi ${versionOf('@hapi/hapi')}, @hapi/nes ${versionOf('@hapi/nes')}, socket.io ${versionOf('socket.io')}, ws ${versionOf('ws')}`,
        `- Date: ${new Date().toISOString()}`,
        `- Run: \`${['node dist/bench/run.js', ...argv].join(' ')}\`${quick ? ' (quick smoke run: smaller sizes)' : ''}, ${repeats} repetition(s) per scenario, figures are medians; took ${minutes} min`,
        `- Load: ${machineLoad()}. Figures are noisy when other processes share the machine: compare ratios within one run.`,
        '- Server and load generator are separate processes on 127.0.0.1; the load generator is one process of plain `ws` clients ' +
        '(nes protocol v2 for hapi-pulse, @hapi/nes and raw ws; engine.io/socket.io packets for socket.io), see bench/README.md.',
        '- "CPU/delivery" is the server process\'s user+system CPU over the measured window divided by deliveries. With one ' +
        'load process on a 2-core machine the client saturates first at high rates, so CPU per delivery is the fairer speed figure there.',
        ''
    ];

    const skipped = skippedLines();
    if (skipped.length) {
        lines.push(...skipped, '');
    }

    lines.push('## Summary (medians)', '', summaryTable(), '');

    const evaluated = goals.map((goal) => ({ goal, result: goal.check() }));
    lines.push('## Targets (hapi-pulse, on medians)', '');
    lines.push(table(['target', 'measured', 'result'], evaluated.map(({ goal, result }) => [
        goal.text,
        result ? result.value : 'not measured',
        result ? (result.pass ? 'PASS' : result.failWord ?? 'MISS') : (targetByName('pulse').unavailable() ? 'n/a (hapi-pulse not available)' : 'n/a')
    ])), '');

    for (const scenario of selected) {
        lines.push(`## ${scenario.title}`, '', scenario.describe(quick), '', scenarioTable(scenario), '');
    }

    return lines.join('\n');
}

// Main

async function main(): Promise<void> {

    console.log(`hapi-pulse bench: ${quick ? 'quick' : 'full'} run, ${repeats} repetition(s), scenarios: ${selected.map((s) => s.id).join(', ')}`);
    const pulseMissing = targetByName('pulse').unavailable();
    if (pulseMissing && (!onlyTargets.length || onlyTargets.includes('pulse'))) {
        console.log(`hapi-pulse: ${pulseMissing}; skipping it`);
    }

    for (let rep = 1; rep <= repeats; ++rep) {
        for (const kind of sessions) {
            for (const target of targets) {
                const todo = selected
                    .filter((s) => s.session === kind && rep <= (s.repeats ?? repeats) && activeTargets(s).includes(target))
                    .sort((a, b) => a.order - b.order);

                if (!todo.length) {
                    continue;
                }

                const missing = target.unavailable() ?? await kind.unavailable?.(ctx) ?? null;
                if (missing) {
                    if (!target.unavailable()) {
                        console.log(`[${todo.map((s) => s.id).join(', ')} ${rep}] ${target.label}: ${missing}`);
                    }

                    todo.forEach((s) => (cell(s.id, target.name).unavailable = missing));
                    continue;
                }

                let open: Open | null = null;
                for (const scenario of todo) {
                    const entry = cell(scenario.id, target.name);
                    const times = Math.min(scenario.repeats ?? repeats, repeats);
                    const prefix = `[${scenario.id} ${rep}/${times}] ${target.label.padEnd(30)}`;
                    const t0 = Date.now();
                    try {
                        open = open ?? await openSession(kind, target);
                        const metrics = await scenario.run(ctx, open.session);
                        entry.runs.push(metrics);
                        const extras = scenario.metrics.map((m) => `${m.label} ${(m.format ?? human)(metrics[m.key] ?? NaN)}`).join(', ');
                        console.log(`${prefix} ${scenario.headline.label} ${(scenario.headline.format ?? human)(metrics[scenario.headline.key] ?? NaN)}; ${extras} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
                    }
                    catch (err) {
                        const error = open ? withOutput(err, open.stderr()) : err as Error;
                        entry.errors.push(error.message);
                        console.log(`${prefix} FAILED: ${error.message}`);
                        if (open) {
                            await open.close();                     // The next scenario gets a fresh session
                            open = null;
                        }
                    }
                }

                await open?.close();
            }
        }
    }

    const text = report();
    console.log(`\n${text}`);
    const out = full ? Path.join(repoRoot, 'bench', 'RESULTS.md') : (fullOptIn ? Path.join(repoRoot, 'bench', 'RESULTS-many.md') : Path.join(__dirname, 'RESULTS.last.md'));
    Fs.writeFileSync(out, `${text}\n`);
    Fs.writeFileSync(Path.join(__dirname, 'results.json'), JSON.stringify({ quick, repeats, argv, results: Object.fromEntries([...results].map(([k, v]) => [k, Object.fromEntries(v)])) }, null, 2));
    console.log(`Report written to ${Path.relative(process.cwd(), out)} (${((Date.now() - started) / 60_000).toFixed(1)} min)`);
}

main().then(() => {

    clearTimeout(watchdog);
    killAll();
}, (err: unknown) => {

    console.error(err);
    killAll();
    process.exit(1);
});
