{{/* Names and labels, the standard way. */}}
{{- define "gpt-oss.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gpt-oss.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gpt-oss.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpt-oss.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gpt-oss.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gpt-oss.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpt-oss-cluster
{{- end -}}

{{- define "gpt-oss.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "gpt-oss.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "gpt-oss.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* TP x PP of the engine, from the cluster config (its preset or its own parallelism). */}}
{{- define "gpt-oss.checkGpus" -}}
{{- $par := ((.Values.cluster.engine | default dict).parallelism | default dict) -}}
{{- $tp := int ($par.tensor_parallel_size | default 1) -}}
{{- $pp := int ($par.pipeline_parallel_size | default 1) -}}
{{- if ne (mod (int .Values.gpuWorkers.gpusPerPod) (mul $tp $pp)) 0 -}}
{{- fail (printf "gpuWorkers.gpusPerPod (%d) must be a multiple of cluster.engine.parallelism tensor_parallel_size x pipeline_parallel_size (%d x %d)" (int .Values.gpuWorkers.gpusPerPod) $tp $pp) -}}
{{- end -}}
{{- end -}}

{{/* Volumes every Ray pod mounts: weights, and /dev/shm. */}}
{{- define "gpt-oss.volumes" -}}
- name: weights
{{- if eq .root.Values.weights.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.weights.claimName }}
    readOnly: true
{{- else }}
  hostPath:
    path: {{ .root.Values.weights.hostPath }}
    type: Directory
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
- name: tmp
  emptyDir: {}
- name: api-keys
  secret:
    secretName: {{ include "gpt-oss.apiKeysSecret" .root }}
{{- end -}}

{{- define "gpt-oss.container" -}}
image: {{ include "gpt-oss.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  capabilities:
    drop: ["ALL"]
env:
  - name: GPT_OSS_CLUSTER_AUTH__API_KEYS_FILE
    value: /etc/gpt-oss/api-keys
  - name: HF_HUB_OFFLINE
    value: "1"
  # The root filesystem is read-only: Ray's session files and every cache go to /tmp.
  - name: HOME
    value: /tmp/home
  - name: XDG_CACHE_HOME
    value: /tmp/cache
  # Ray Serve's flags for the ingress (templates/_serve_env.tpl, generated from the config).
  {{- include "gpt-oss.serveEnv" .root | nindent 2 }}
volumeMounts:
  - name: weights
    mountPath: {{ .root.Values.weights.mountPath }}
    readOnly: true
  - name: dshm
    mountPath: /dev/shm
  - name: tmp
    mountPath: /tmp
  - name: api-keys
    mountPath: /etc/gpt-oss
    readOnly: true
{{- end -}}

{{/* Ray pods: KubeRay injects its own readiness and liveness probes into Ray containers. */}}
{{- define "gpt-oss.podAnnotations" -}}
checkov.io/skip1: CKV_K8S_8=KubeRay injects the Ray liveness probe
checkov.io/skip2: CKV_K8S_9=KubeRay injects the Ray readiness probe
checkov.io/skip3: CKV_K8S_43=the chart pins image.tag; set it to a digest where required
checkov.io/skip4: CKV_K8S_15=IfNotPresent with pinned tags; Always re-pulls a multi-GB image
{{- end -}}

{{/* The application config passed to Serve: .Values.cluster, pointed at the chart's Redis when
it deploys one. */}}
{{- define "gpt-oss.clusterArgs" -}}
{{- $cluster := deepCopy .Values.cluster -}}
{{- if .Values.redis.enabled -}}
{{- $responses := deepCopy (default dict $cluster.responses) -}}
{{- $_ := set $responses "store" "redis" -}}
{{- $_ := set $responses "redis_url" (printf "redis://%s-redis:6379/0" (include "gpt-oss.fullname" .)) -}}
{{- $_ := set $cluster "responses" $responses -}}
{{- end -}}
{{- toYaml $cluster -}}
{{- end -}}
