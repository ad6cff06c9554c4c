// Package member is Shoal's gossip membership: every scheduler and worker
// runs one Member, a thin wrapper over hashicorp/memberlist, and learns
// from it who else is in the cluster and how to reach them.
//
// Each member advertises a Meta (role, name, the scheduler's control and
// dashboard addresses or the worker's data address, threads, resources,
// version), encoded as JSON into memberlist's node metadata, which is
// limited to 512 bytes (ErrMetaTooLarge).
//
// Use:
//
//	cfg := member.DefaultConfig()
//	cfg.Name = "worker-1"
//	cfg.Meta = member.Meta{Role: member.RoleWorker, Data: dataAddr, NThreads: 8}
//	cfg.Token = token // optional: encrypts and authenticates gossip
//	m, err := member.New(cfg)
//	...
//	defer m.Shutdown()
//	if _, err := m.Join([]string{"10.0.0.1:7946"}); err != nil { ... }
//	sched, err := m.WaitFor(ctx, member.IsScheduler)
//	// dial sched.Meta.Control
//
// A worker needs one seed, which may be any member (the scheduler or
// another worker): gossip spreads everyone's Meta to everyone.
//
// Contract:
//   - Events delivers Join, Update, Leave (a graceful Leave) and Dead
//     (failure detected by probing) without ever blocking memberlist: the
//     channel is bounded (Config.EventBuffer) and events that do not fit
//     are dropped and counted by Dropped. A consumer that must not miss
//     anything reconciles with Members after a drop.
//   - Events include this member's own Join, at start.
//   - Members and WaitFor see live members only (alive or suspect), the
//     local member included. memberlist does not expose suspicion, so
//     Node.State is StateAlive there, StateDead or StateLeft in the
//     corresponding events.
//   - Leave versus Dead: memberlist reports both through the same
//     callback, so Leave first gossips Meta.Leaving; a departure whose
//     flag had not arrived yet is reported as Dead.
//   - Leave announces a graceful departure; Shutdown stops the member (and
//     closes the Events channel). A member that stops without Leave is
//     reported Dead by the others after probing, within a few seconds with
//     the default timings.
//   - With Config.Token set, every member must use the same token: gossip
//     is encrypted with AES-GCM under SHA-256(token), and members with a
//     different token or none cannot join or see each other.
package member
