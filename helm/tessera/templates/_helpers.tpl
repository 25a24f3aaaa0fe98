{{/*
Names. The full name is kept short: StatefulSet pods append "-worker-<replica>-<ordinal>" and
Kubernetes limits names used in labels to 63 characters.
*/}}
{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "tessera" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tessera" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Router (Deployment and Service) of model replica i: include "tessera.routerName" (list $ i) */}}
{{- define "tessera.routerName" -}}
{{- printf "%s-router-%d" (include "tessera.fullname" (index . 0)) (int (index . 1)) -}}
{{- end -}}

{{/* Worker StatefulSet (and its headless Service) of model replica i */}}
{{- define "tessera.workerName" -}}
{{- printf "%s-worker-%d" (include "tessera.fullname" (index . 0)) (int (index . 1)) -}}
{{- end -}}

{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tessera
app.kubernetes.io/version: {{ .Values.images.tag | default .Chart.AppVersion | quote }}
{{ include "tessera.selectorLabels" . }}
{{- end -}}

{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: tessera
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tessera.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s:%s" (index . 1) ($root.Values.images.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{/*
The configuration every process reads (docs/CONFIGURATION.md): .Values.config with the keys
that wire the tiers together set by the chart. Per-pod keys (worker.router_address, group,
rank, metrics_port) are --set on the worker's command line.
*/}}
{{- define "tessera.config" -}}
{{- $routers := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $routers = append $routers (printf "%s:%d" (include "tessera.routerName" (list $ $i)) (int $.Values.ports.grpc)) -}}
{{- end -}}
{{- $model := dict "path" (printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.file) -}}
{{- if .Values.model.servedName -}}
{{- $_ := set $model "served_name" .Values.model.servedName -}}
{{- end -}}
{{- $wiring := dict
      "model" $model
      "gateway" (dict "host" "0.0.0.0" "port" (int .Values.ports.http) "routers" $routers)
      "router" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.grpc)) "metrics_port" (int .Values.ports.routerMetrics))
      "worker" (dict "tensor_parallel_size" (int .Values.worker.tensorParallelSize) "metrics_port" (int .Values.ports.workerMetrics)) -}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $wiring) -}}
{{- end -}}

{{/* A drain timeout from .Values.config, or the binaries' default (30 s). */}}
{{- define "tessera.drainSeconds" -}}
{{- $root := index . 0 -}}
{{- $section := index $root.Values.config (index . 1) | default dict -}}
{{- int (get $section "drain_timeout_s" | default 30) -}}
{{- end -}}

{{/* Volumes shared by every tier: the configuration, the model and a writable /tmp. */}}
{{- define "tessera.volumes" -}}
- name: config
  configMap:
    name: {{ include "tessera.fullname" . }}-config
- name: model
  {{- toYaml .Values.model.volume | nindent 2 }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "tessera.volumeMounts" -}}
- name: config
  mountPath: /etc/tessera
  readOnly: true
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* httpGet probe: include "tessera.probe" (list settings path port) */}}
{{- define "tessera.probe" -}}
httpGet:
  path: {{ index . 1 }}
  port: {{ index . 2 }}
{{- range $k, $v := index . 0 }}
{{ $k }}: {{ $v }}
{{- end }}
{{- end -}}

{{- define "tessera.preStop" -}}
{{- if gt (int .Values.preStopSleepSeconds) 0 -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ int .Values.preStopSleepSeconds }}"]
{{- end }}
{{- end -}}
