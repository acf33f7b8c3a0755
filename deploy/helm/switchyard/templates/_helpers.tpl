{{/* Chart name. */}}
{{- define "switchyard.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; kept short enough for "-<stage>" suffixes. */}}
{{- define "switchyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
switchyard/pipeline: {{ .Values.pipeline.name | quote }}
{{- end -}}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the ConfigMap is mounted, and the pipeline folder in it. */}}
{{- define "switchyard.pipelinesRoot" -}}/etc/switchyard/pipelines{{- end -}}
{{- define "switchyard.pipelineDir" -}}
{{- printf "%s/%s" (include "switchyard.pipelinesRoot" .) .Values.pipeline.name -}}
{{- end -}}

{{/*
The pipeline files as a YAML map, path (under files/pipelines/) → content: every file under
files/pipelines/ of the chart, then pipeline.extraFiles on top.
*/}}
{{- define "switchyard.configFiles" -}}
{{- $files := dict -}}
{{- range $path, $bytes := .Files.Glob "files/pipelines/**" -}}
{{- if not (hasSuffix ".csv" $path) -}}
{{- $_ := set $files (trimPrefix "files/pipelines/" $path) ($.Files.Get $path) -}}
{{- end -}}
{{- end -}}
{{- range $path, $content := .Values.pipeline.extraFiles -}}
{{- $_ := set $files $path $content -}}
{{- end -}}
{{- /* toYaml drops the text's last newline, which would cut the last file's final newline. */ -}}
{{- printf "%s\n" (toYaml $files) -}}
{{- end -}}

{{/* The local tier's training data (CSV files): a ConfigMap of their own, as together with
the rest they would pass the 1 MiB a ConfigMap holds. */}}
{{- define "switchyard.trainingFiles" -}}
{{- $files := dict -}}
{{- range $path, $bytes := .Files.Glob "files/pipelines/**.csv" -}}
{{- $_ := set $files (trimPrefix "files/pipelines/" $path) ($.Files.Get $path) -}}
{{- end -}}
{{- printf "%s\n" (toYaml $files) -}}
{{- end -}}

{{/* A ConfigMap key for a file path: keys cannot hold "/". */}}
{{- define "switchyard.configKey" -}}
{{- replace "/" "__" . -}}
{{- end -}}

{{/* The pipelines volume: the ConfigMap's flat keys laid out as the folder tree again. */}}
{{- define "switchyard.pipelinesVolume" -}}
- name: pipelines
  projected:
    sources:
      - configMap:
          name: {{ include "switchyard.fullname" . }}-pipelines
          items:
          {{- range $path, $_ := (include "switchyard.configFiles" . | fromYaml) }}
            - key: {{ include "switchyard.configKey" $path }}
              path: {{ $path }}
          {{- end }}
      {{- $training := include "switchyard.trainingFiles" . | fromYaml }}
      {{- if $training }}
      - configMap:
          name: {{ include "switchyard.fullname" . }}-training
          items:
          {{- range $path, $_ := $training }}
            - key: {{ include "switchyard.configKey" $path }}
              path: {{ $path }}
          {{- end }}
      {{- end }}
{{- end -}}

{{/* Consumer group of a stage: <groupPrefix>.<pipeline>.<stage>. Argument: (list $ stageName). */}}
{{- define "switchyard.consumerGroup" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s.%s" $root.Values.groupPrefix $root.Values.pipeline.name (index . 1) -}}
{{- end -}}

{{/* -X key=value arguments. */}}
{{- define "switchyard.kafkaArgs" -}}
{{- range $key, $value := .Values.kafka.properties }}
- -X
- {{ printf "%s=%v" $key $value | quote }}
{{- end }}
{{- end -}}

{{/* Environment shared by stage and ledger-sink pods. Argument: (list $ withProviders). */}}
{{- define "switchyard.env" -}}
{{- $root := index . 0 -}}
{{- $withProviders := index . 1 -}}
- name: SWITCHYARD_BROKERS
  value: {{ $root.Values.brokers | quote }}
- name: SWITCHYARD_LOG
  value: {{ $root.Values.logLevel | quote }}
{{- range $root.Values.kafka.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
{{- if $root.Values.ledger.enabled }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "ledger.databaseUrl.secretName is required when the ledger is enabled" $root.Values.ledger.databaseUrl.secretName }}
      key: {{ $root.Values.ledger.databaseUrl.secretKey }}
{{- end }}
{{- if $withProviders }}
{{- range $name, $p := $root.Values.providers }}
{{- if and $p.url (or (not $p.simulator) $root.Values.llmSim.enabled) }}
- name: {{ printf "SWITCHYARD_PROVIDER_%s_URL" ($name | upper | replace "-" "_") }}
  value: {{ tpl $p.url $root | quote }}
{{- end }}
{{- range $p.keys }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
{{- end }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "switchyard.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
