// Headless Chromium for the browser tests (browser.ts, inspector.ts, docs.ts). Chromium is driven from a child
// process running the test file itself, with an environment variable naming the URL to open: playwright-core
// defines process-wide globals that cannot be removed (signal-exit's emitter) and that lab would report as leaks.

import * as ChildProcess from 'node:child_process';
import * as Fs from 'node:fs';
import * as Os from 'node:os';
import * as Path from 'node:path';

export const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const chromiumAvailable = Fs.existsSync(chromiumPath);
const ci = process.env.CI === 'true';

// Whether the test `what` names is skipped: outside CI a missing Chromium skips it, loudly; under CI=true it runs
// (and fails in requireChromium()).
export const chromiumSkipped = (what: string): boolean => {

    const skipped = !chromiumAvailable && !ci;
    if (skipped) {
        console.error('\n' + '='.repeat(78) + `\n  SKIPPED: Chromium not installed (${chromiumPath}): ${what} did not run\n` + '='.repeat(78) + '\n');
    }

    return skipped;
};

// In a test that was not skipped: a missing Chromium fails it.
export const requireChromium = (): void => {

    if (!chromiumAvailable) {
        throw new Error(`Chromium not installed at ${chromiumPath} (required when CI=true)`);
    }
};

// In the child (process.env[variable] set to the URL): opens a tab in a fresh profile, lets `use` drive it,
// prints what `use` returns as JSON. In the test process: nothing.
export const drive = (variable: string, contextOptions: Record<string, unknown>, use: (tab: any, url: string) => Promise<unknown>): void => {

    const url = process.env[variable];
    if (url === undefined) {
        return;
    }

    const run = async (): Promise<void> => {

        const { chromium } = require('playwright-core');
        const userDataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), 'hapi-pulse-chromium-'));
        const context = await chromium.launchPersistentContext(userDataDir, {
            executablePath: chromiumPath,
            headless: true,
            args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
            ...contextOptions
        });

        try {
            const tab = context.pages()[0] ?? await context.newPage();
            process.stdout.write(JSON.stringify(await use(tab, url)));
        }
        finally {
            await context.close();
            Fs.rmSync(userDataDir, { recursive: true, force: true });
        }
    };

    run().catch((err) => {

        console.error(err);
        process.exitCode = 1;
    });
};

// In the test process: runs `file` as the driver child for `url` and resolves with what it printed.
export const runDriver = (file: string, variable: string, url: string, timeout: number): Promise<any> => new Promise((resolve, reject) => {

    ChildProcess.execFile(process.execPath, [file], { env: { ...process.env, [variable]: url }, timeout }, (err, stdout, stderr) => {

        return err ? reject(new Error(`Browser driver failed: ${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout));
    });
});
