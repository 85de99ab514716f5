import type { Viewer } from '../auth/auth-service.js';
import type { Prisma, PrismaClient } from '../db/database.js';

export class UserService {
  constructor(private readonly prisma: PrismaClient) {}

  /** The viewer's own user row; `query` carries the selections Pothos needs (no N+1). */
  async byIdForQuery(viewer: Viewer, query: { include?: Prisma.UserInclude; select?: Prisma.UserSelect }) {
    return this.prisma.user.findUniqueOrThrow({ ...query, where: { id: viewer.userId } });
  }
}
