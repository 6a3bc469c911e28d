package agent

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics, on a registry of its own.
type metrics struct {
	reg        *prometheus.Registry
	phases     *prometheus.HistogramVec
	extensions *prometheus.CounterVec
	resumes    *prometheus.CounterVec
	resumeTime prometheus.Histogram
	pauses     prometheus.Counter
}

// phaseBuckets span a fast extension on a quiet host (ms) to a VG waiting for a PV (minutes).
var phaseBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lvwatch_extension_phase_seconds",
			Help:    "Time of each phase of an extension: detect (crossing write → agent), request (mailbox request → SPM reply), refresh (metadata read and table swap), rearm, and total (crossing write → re-armed, bigger LV).",
			Buckets: phaseBuckets,
		}, []string{"phase"}),
		extensions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lvwatch_extensions_total",
			Help: "Extension attempts by result: extended, or the step that failed (request, refresh, verify, arm).",
		}, []string{"result"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lvwatch_vm_resumes_total",
			Help: "VMs paused for want of space that the agent resumed (resumed), or could not reach or resume (failed).",
		}, []string{"result"}),
		resumeTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lvwatch_vm_resume_seconds",
			Help:    "Time from an LV's new table going live to its paused VM running again.",
			Buckets: phaseBuckets,
		}),
		pauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lvwatch_vm_pauses_total",
			Help: "VMs found paused for want of space on a device, each pause counted once.",
		}),
	}
	m.reg.MustRegister(m.phases, m.extensions, m.resumes, m.resumeTime, m.pauses, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		stateCollector{a})
	return m
}

func (m *metrics) observe(ph Phases) {
	for phase, d := range map[string]float64{"detect": ph.Detect.Seconds(), "request": ph.Request.Seconds(),
		"refresh": ph.Refresh.Seconds(), "rearm": ph.Rearm.Seconds(), "total": ph.Total.Seconds()} {
		m.phases.WithLabelValues(phase).Observe(d)
	}
	m.extensions.WithLabelValues("extended").Inc()
}

func (m *metrics) failed(step string) { m.extensions.WithLabelValues(step).Inc() }

// resumed counts a VM resumed, and times it from its LV's new table going live
// when timed (not for a VM resumed on a look that grew nothing).
func (m *metrics) resumed(took time.Duration, timed bool) {
	m.resumes.WithLabelValues("resumed").Inc()
	if timed {
		m.resumeTime.Observe(took.Seconds())
	}
}

func (m *metrics) resumeFailed() { m.resumes.WithLabelValues("failed").Inc() }

// Handler serves the agent's metrics in Prometheus' format.
func (a *Agent) Handler() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{})
}

// stateCollector reports what is read when scraped: the volumes by state, the
// SPM's requests waiting for space, the BPF program's counters.
type stateCollector struct{ a *Agent }

var (
	volumesDesc = prometheus.NewDesc("lvwatch_watched_volumes", "Watched LVs by state.", []string{"state"}, nil)
	pendingDesc = prometheus.NewDesc("lvwatch_spm_pending_requests", "Requests the co-located SPM keeps until their VG has room.", []string{"vg"}, nil)
	vmsDesc     = prometheus.NewDesc("lvwatch_vms_waiting_for_space", "VMs paused for want of space that the agent has not resumed yet.", nil, nil)
	lostDesc    = prometheus.NewDesc("lvwatch_bpf_lost_events_total", "Crossings the BPF program could not queue (ring full; the device stayed armed).", nil, nil)
	crossDesc   = prometheus.NewDesc("lvwatch_bpf_crossings_total", "Crossings the BPF program raised.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- volumesDesc
	ch <- pendingDesc
	ch <- vmsDesc
	ch <- lostDesc
	ch <- crossDesc
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status()
	byState := map[string]int{StateArmed: 0, StateExtending: 0, StateWaiting: 0, StateRetrying: 0, StateAtMaximum: 0}
	for _, v := range st.Volumes {
		byState[v.State]++
	}
	for state, n := range byState {
		ch <- prometheus.MustNewConstMetric(volumesDesc, prometheus.GaugeValue, float64(n), state)
	}
	if st.SPM != nil {
		for _, d := range st.SPM.Domains {
			ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(len(d.WaitingOnSpace)), d.VG)
		}
	}
	ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(len(st.PausedVMs)))
	if cnt, err := c.a.w.Counters(); err == nil {
		ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(cnt.Lost))
		ch <- prometheus.MustNewConstMetric(crossDesc, prometheus.CounterValue, float64(cnt.Crossings))
	}
}
