// hapi-pulse, registered exactly like @hapi/nes, default options. The two-node, recovery and presence scenarios pass
// ServerOptions: a RedisBroker shared by several server processes, and/or a '/rec/{id}' subscription with history,
// or an auth strategy and '/room/{id}' with or without presence (pulse-presence.ts).

import Path from 'node:path';

import { createHapiTarget } from './hapi-common';
import { presenceSetup } from './pulse-presence';
import type { BenchServer, ServerFactory, ServerOptions } from './types';

// dist/bench/servers/pulse.js -> dist/lib/index.js and the dist/lib/redis.js entry
export const pulsePath = Path.join(__dirname, '..', '..', 'lib', 'index.js');
const redisPath = Path.join(__dirname, '..', '..', 'lib', 'redis.js');

// BENCH_OTEL=1: an OpenTelemetry SDK reads the plugin's metrics (a MeterProvider with a reader collecting every
// second), to measure what exporting metrics costs against the default run, where no SDK is registered.
const registerSdk = (): void => {

    const { metrics } = require('@opentelemetry/api');
    const { MeterProvider, PeriodicExportingMetricReader, InMemoryMetricExporter, AggregationTemporality } = require('@opentelemetry/sdk-metrics');
    const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 1000 });
    metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
    setInterval(() => exporter.reset(), 5000).unref();            // keeps what it exported from piling up
};

export const create: ServerFactory = async (options = {}) => {

    if (process.env.BENCH_OTEL === '1') {
        registerSdk();
    }

    return createPulseTarget(require(pulsePath), options);
};

// Also the 'pulse-base' target: another build of hapi-pulse (e.g. main before a change), same options.
export async function createPulseTarget(Pulse: unknown, options: ServerOptions): Promise<BenchServer> {

    const heartbeat = options.heartbeat ? { heartbeat: options.heartbeat } : {};
    if (!options.broker && !options.history && !options.presence) {
        return createHapiTarget(Pulse, heartbeat);
    }

    const { RedisBroker } = require(redisPath) as { RedisBroker: new (options: object) => unknown };
    const broker = options.broker === 'redis' ? new RedisBroker({ url: options.url, prefix: options.prefix }) : undefined;
    const pluginOptions = broker ? { ...heartbeat, broker } : heartbeat;
    if (options.presence) {
        const setup = presenceSetup(options.presence, broker);
        return createHapiTarget(Pulse, { ...pluginOptions, ...setup.options }, setup.extras);
    }

    const subscriptions: Array<[string, object]> = options.history ? [['/rec/{id}', { history: options.history }]] : [];
    return createHapiTarget(Pulse, pluginOptions, { subscriptions, catchPublish: true });
}
