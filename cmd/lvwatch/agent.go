package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/lvwatch/lvwatch/internal/agent"
	"github.com/lvwatch/lvwatch/internal/config"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/spm"
	"github.com/lvwatch/lvwatch/internal/statusd"
)

func runAgent(ctx context.Context, args []string) error {
	fs := newFlagSet("agent")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch agent --domain VG --host-id N [--spm] [--devices PV,...] [--chunk SIZE] [--trigger SIZE]\n"+
			"       lvwatch agent --config FILE\n\n"+
			"Watches the domain's active qcow2 LVs on this host and extends each before its image\n"+
			"reaches the end: a write past the threshold asks the SPM for one chunk more through the\n"+
			"mailbox, then the LV's table is reloaded and the threshold re-armed. --spm also serves the\n"+
			"domain's extend requests as its SPM in this process. Runs until SIGTERM or ^C.")
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "", "the configuration file ([agent], [[agent.domain]], [spm]); excludes the domain flags")
	domain := fs.String("domain", "", "the storage domain: its VG, named by the domain UUID")
	hostID := fs.Int("host-id", 0, "this host's id in the domain's mailbox (1..249)")
	runSPM := fs.Bool("spm", false, "also run the domain's SPM in this process")
	devices := fs.String("devices", "", "comma-separated PVs of the VG (default: found from the LVs' tables)")
	chunk := fs.String("chunk", "", "what one extension adds (default "+size.Format(agent.DefaultChunk)+")")
	trigger := fs.String("trigger", "", "free space left in an LV when it is extended (default "+size.Format(agent.DefaultTrigger)+")")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics here: host:port (loopback advised) or a unix socket path")
	statusSocket := fs.String("socket", "", "serve `lvwatch status` on this unix socket (default "+statusd.DefaultSocket+")")
	var sockets stringList
	fs.Var(&sockets, "qmp", "resume VMs paused for want of space through these QMP sockets (globs; repeatable; default "+resume.DefaultQMP+")")
	var monitors stringList
	fs.Var(&monitors, "qmp-monitor", "and through these QMP monitors of lvwatch's own, held open for their events (globs; repeatable; sockets the VMs were started with for lvwatch alone; those --qmp matches are never held)")
	libvirtURI := fs.String("libvirt", "", "resume them through this libvirt (default: this host's when it runs; none: no libvirt)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, ends, err := agentConfig(*cfgPath, *domain, *hostID, *runSPM, *devices, *chunk, *trigger)
	if err != nil {
		return err
	}
	// Each flag overrides its own setting of the file's, or the default.
	if sockets != nil {
		ends.qmp = (*[]string)(&sockets)
	}
	if monitors != nil {
		ends.monitors = monitors
	}
	cfg.VMs = config.VMSources(ends.qmp, ends.monitors, cmp.Or(*libvirtURI, ends.libvirt))
	metrics := cmp.Or(*metricsAddr, ends.metrics)
	socket := cmp.Or(*statusSocket, ends.status, statusd.DefaultSocket)
	cfg.Log = logger
	if every, err := daemon.SdWatchdogEnabled(false); err == nil && every > 0 {
		cfg.Heartbeat = func() { daemon.SdNotify(false, daemon.SdNotifyWatchdog) }
		cfg.HeartbeatEvery = every
	}
	a, err := agent.Start(cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	sd, err := statusd.Serve(socket, func() any { return a.Status() }, logger)
	if err != nil {
		return err
	}
	defer sd.Close()
	if metrics != "" {
		stop, err := serveMetrics(metrics, a.Handler())
		if err != nil {
			return err
		}
		defer stop()
	}
	daemon.SdNotify(false, daemon.SdNotifyReady)
	err = a.Run(ctx)
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	return err
}

// endpoints are where the agent serves its metrics and status, and the ways to
// the VMs it resumes, as the file says.
type endpoints struct {
	metrics, status string
	qmp             *[]string
	monitors        []string
	libvirt         string
}

// agentConfig builds the agent's configuration from the file or from the flags.
func agentConfig(path, domain string, hostID int, runSPM bool, devices, chunk, trigger string) (agent.Config, endpoints, error) {
	if path != "" {
		if domain != "" || hostID != 0 || runSPM || devices != "" || chunk != "" || trigger != "" {
			return agent.Config{}, endpoints{}, fmt.Errorf("%w: --config excludes --domain, --host-id, --spm, --devices, --chunk and --trigger", errUsage)
		}
		f, err := config.Load(path)
		if err != nil {
			return agent.Config{}, endpoints{}, err
		}
		cfg, err := f.AgentConfig()
		return cfg, endpoints{f.Agent.Metrics, f.Agent.Status, f.Agent.QMP, f.Agent.QMPMonitors, f.Agent.Libvirt}, err
	}
	if domain == "" || hostID == 0 {
		return agent.Config{}, endpoints{}, fmt.Errorf("%w: --domain and --host-id, or --config, are required", errUsage)
	}
	d := agent.Domain{VG: domain}
	if devices != "" {
		d.Devices = strings.Split(devices, ",")
	}
	if err := parseSizes(sizeFlag{"--chunk", chunk, &d.Policy.Chunk}, sizeFlag{"--trigger", trigger, &d.Policy.Trigger}); err != nil {
		return agent.Config{}, endpoints{}, err
	}
	cfg := agent.Config{HostID: hostID, Domains: []agent.Domain{d}}
	if runSPM {
		cfg.SPM = &spm.Config{Domains: []spm.DomainConfig{{VG: domain, Devices: d.Devices}}}
	}
	return cfg, endpoints{}, nil
}

// serveMetrics serves h on addr: a unix socket when addr is a path, else TCP.
func serveMetrics(addr string, h http.Handler) (stop func(), err error) {
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
		os.Remove(addr) // a socket left by an earlier run
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error().Err(err).Str("address", addr).Msg("metrics server stopped")
		}
	}()
	logger.Info().Str("address", addr).Msg("serving metrics")
	return func() { srv.Close() }, nil
}
