{{/* Labels on every object: the kustomization's part-of, and Helm's own. */}}
{{- define "weir.labels" -}}
app.kubernetes.io/part-of: weir
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "weir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The address the agent serves /metrics and /healthz on. */}}
{{- define "weir.metricsAddr" -}}
{{ .Values.metrics.host }}:{{ .Values.metrics.port }}
{{- end -}}

{{/* Scraping from outside the node needs a non-loopback metrics address. */}}
{{- define "weir.checkScrapable" -}}
{{- if and (or .Values.metrics.serviceMonitor.enabled .Values.metrics.datadog.enabled) (hasPrefix "127." (toString .Values.metrics.host)) -}}
{{- fail "metrics.serviceMonitor and metrics.datadog scrape the agent from outside the node: set metrics.host to 0.0.0.0 (the agent listens on the node's loopback by default)" -}}
{{- end -}}
{{- end -}}
