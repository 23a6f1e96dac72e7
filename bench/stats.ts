// Small numeric and formatting helpers for the report.

export function median(values: readonly number[]): number {

    const finite = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
    if (!finite.length) {
        return NaN;
    }

    const mid = finite.length >> 1;
    return finite.length % 2 ? finite[mid]! : (finite[mid - 1]! + finite[mid]!) / 2;
}

// 1234567 -> "1.23M", 61234 -> "61.2k", 12.345 -> "12.3"
export function human(value: number, digits = 3): string {

    if (!Number.isFinite(value)) {
        return '–';
    }

    const abs = Math.abs(value);
    if (Number.isInteger(value) && abs < 1e4) {
        return String(value);
    }

    if (abs >= 1e6) {
        return `${(value / 1e6).toPrecision(digits)}M`;
    }

    if (abs >= 1e4) {
        return `${(value / 1e3).toPrecision(digits)}k`;
    }

    if (abs >= 100) {
        return value.toFixed(0);
    }

    return value.toPrecision(digits);
}

export function ratio(value: number, base: number): string {

    if (!Number.isFinite(value) || !Number.isFinite(base) || base === 0) {
        return '–';
    }

    const r = value / base;
    return `${r >= 10 ? r.toFixed(0) : r.toFixed(2)}×`;
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {

    const lines = [
        `| ${header.join(' | ')} |`,
        `|${header.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`,
        ...rows.map((row) => `| ${row.join(' | ')} |`)
    ];

    return lines.join('\n');
}
