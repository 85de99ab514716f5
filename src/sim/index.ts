export {
  startSimulator,
  type Simulator,
  type SimulatorOptions,
  type SimChurnOptions,
  type SimFault,
  type SimGuest,
  type SimMember,
  type SimStats,
  type SimTarget,
  type SimToken,
  type GuestType,
} from './simulator.js';
export { generateSelfSigned, generateCaSigned, pemFingerprint, type SimCertificate } from './cert.js';
export type { NextIdRange } from './datacenter.js';
export type { CertificateInfo } from './identity.js';
export { ALL_PRIVILEGES, type SimGrants, type SimPrivileges } from './permissions.js';
export type { SimTask } from './tasks.js';
