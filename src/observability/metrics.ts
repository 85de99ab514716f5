import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Prometheus metrics of one server process (served at /metrics). A registry per instance,
 * not prom-client's global one, so several servers in one process (tests) do not collide.
 * Labels are bounded sets only: never operation names or ids a client chooses.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly httpRequests = new Counter({
    name: 'pvegraph_http_requests_total',
    help: 'HTTP requests by route and status class.',
    labelNames: ['route', 'status'] as const,
    registers: [this.registry],
  });

  readonly graphqlOperations = new Histogram({
    name: 'pvegraph_graphql_operation_duration_seconds',
    help: 'GraphQL operations (execution, subscriptions excluded) by type and outcome.',
    labelNames: ['type', 'outcome'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  readonly graphqlErrors = new Counter({
    name: 'pvegraph_graphql_errors_total',
    help: 'Errors in GraphQL results by extensions.code.',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  readonly preparedRequests = new Counter({
    name: 'pvegraph_graphql_prepared_requests_total',
    help: 'HTTP GraphQL requests by how they were served: answered on the prepared-query path (prepared; refused for a missing or bad token), or handed to Yoga (and why).',
    labelNames: ['path'] as const,
    registers: [this.registry],
  });

  readonly anonymousRequests = new Counter({
    name: 'pvegraph_anonymous_requests_total',
    help: 'Units charged to client addresses for work done without a valid API token (charged: a request handed to Yoga, a token looked up in vain), and requests refused because their address, or its IPv6 /48, had spent its budget (refused: HTTP 429, WebSocket 1013).',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly backgroundCheckFailures = new Counter({
    name: 'pvegraph_cache_background_check_failures_total',
    help: 'Background re-checks of a cached token or node ownership that failed (database unreachable); the entry kept answering until it expired.',
    labelNames: ['cache'] as const,
    registers: [this.registry],
  });

  readonly activeSubscriptions = new Gauge({
    name: 'pvegraph_active_subscriptions',
    help: 'Subscriptions currently streaming (WebSocket and SSE).',
    registers: [this.registry],
  });

  readonly revokedConnections = new Counter({
    name: 'pvegraph_revoked_connections_total',
    help: 'WebSockets closed (4403) and SSE subscriptions ended because their API token was revoked.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });

  readonly webSockets = new Gauge({
    name: 'pvegraph_websocket_connections',
    help: 'Open graphql-ws connections.',
    registers: [this.registry],
  });

  readonly proxmoxCalls = new Histogram({
    name: 'pvegraph_proxmox_call_duration_seconds',
    help: 'Calls to Proxmox hosts by API path and outcome (ok or error code).',
    labelNames: ['path', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  readonly vmidCacheLookups = new Counter({
    name: 'pvegraph_vmid_cache_lookups_total',
    help: 'VMID set reads served from the cache (hit) or from Proxmox (miss).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly vmidSnapshotReads = new Counter({
    name: 'pvegraph_vmid_snapshot_reads_total',
    help: "Reads of a node's VMID state answered from this instance's memory (VMID_READ_CACHE_MS) or from Redis, and renewals (a kept copy read again from Redis in the background, answering nobody).",
    labelNames: ['source'] as const,
    registers: [this.registry],
  });

  readonly clusterWatchProbes = new Counter({
    name: 'pvegraph_cluster_watch_probes_total',
    help: "Probes of a watched cluster's recent tasks (GET /cluster/tasks) by this instance while it held the cluster's watch lease, by what they told: unchanged, changed (a guest task appeared), unknown (nothing to compare with), forbidden, rate_limited, error.",
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly clusterWatchListings = new Counter({
    name: 'pvegraph_cluster_watch_listings_total',
    help: 'Full guest listings (GET /cluster/resources) a cluster watch asked for, by outcome: ok, rate_limited, error.',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'pvegraph_' });
  }

  /** Proxmox API paths carry node names and vmids: keep the label set bounded. */
  static proxmoxPathLabel(path: string): string {
    return path.replace(/\/nodes\/[^/]+/, '/nodes/{node}').replace(/\/\d+(?=\/|$)/g, '/{vmid}');
  }
}
