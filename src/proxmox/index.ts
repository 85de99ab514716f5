export {
  ProxmoxClient,
  DEFAULT_MAX_RESPONSE_BYTES,
  type ProxmoxTarget,
  type ProxmoxEndpoint,
  type EndpointResult,
  type ProxmoxClientOptions,
  type ProxmoxLogger,
  type ProxmoxVersion,
  type ProxmoxClusterStatus,
  type ClusterIdentity,
  type ClusterMember,
  type VmidRange,
  type ProxmoxGuest,
  type ProxmoxTask,
  type ConnectionTestResult,
  type ProxmoxPermissions,
  type ProxmoxCall,
} from './client.js';
export {
  fetchCertificateFingerprint,
  normalizeFingerprint,
  fingerprintsEqual,
  type FingerprintProbeOptions,
  type TlsMode,
} from './tls.js';
export {
  classifyAddress,
  addressRefusal,
  normalizeIp,
  resolveAllowed,
  urlHost,
  type AddressClass,
  type HostPolicy,
} from './host-policy.js';
export * from './errors.js';
