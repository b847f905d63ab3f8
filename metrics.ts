/** Prometheus metrics in the text exposition format, with no dependency: counters, gauges, histograms. */
type Labels = Record<string, string>;

const labelText = (labels: Labels) => {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, "_")}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};

export class Counter {
  #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    const entry = this.#values.get(key) ?? { labels, value: 0 };
    entry.value += by;
    this.#values.set(key, entry);
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const { labels, value } of this.#values.values()) {
      lines.push(`${this.name}${labelText(labels)} ${value}`);
    }
    return lines.join("\n");
  }
}

export class Histogram {
  #counts: number[];
  #sum = 0;
  #count = 0;
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {
    this.#counts = new Array(buckets.length).fill(0);
  }

  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    this.buckets.forEach((b, i) => {
      if (value <= b) this.#counts[i]++;
    });
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket{le="${b}"} ${this.#counts[i]}`));
    lines.push(
      `${this.name}_bucket{le="+Inf"} ${this.#count}`,
      `${this.name}_sum ${this.#sum}`,
      `${this.name}_count ${this.#count}`,
    );
    return lines.join("\n");
  }
}

export function gauge(name: string, help: string, value: number, labels: Labels = {}): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name}${labelText(labels)} ${value}`;
}

/** The server's metrics; model runs report into it through the batchers' run observers. */
export class ServerMetrics {
  readonly requests = new Counter("sd_requests_total", "HTTP requests by route and status");
  readonly batchRows = new Histogram("sd_unet_batch_rows", "Rows per batched UNet run", [
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
  ]);
  readonly unetSeconds = new Histogram("sd_unet_run_seconds", "Duration of one batched UNet run", [
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
  ]);
}

export function counterValue(name: string, help: string, value: number): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} counter\n${name} ${value}`;
}
