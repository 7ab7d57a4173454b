{{/*
The `app.kubernetes.io/name` label is fixed: the NetworkPolicies the operator creates admit pods
labelled `app.kubernetes.io/name: fedsec-operator` from the operator's namespace.
*/}}
{{- define "fedsec-operator.appName" -}}
fedsec-operator
{{- end }}

{{- define "fedsec-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. The release name alone when it already contains the chart name.
*/}}
{{- define "fedsec-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fedsec-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedsec-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedsec-operator.appName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fedsec-operator.labels" -}}
helm.sh/chart: {{ include "fedsec-operator.chart" . }}
{{ include "fedsec-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: fedsec
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fedsec-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fedsec-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
repository:tag, or repository@digest when a digest is given; the tag defaults to the appVersion.
*/}}
{{- define "fedsec-operator.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "fedsec-operator.image" -}}
{{- include "fedsec-operator.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "fedsec-operator.runtimeImage" -}}
{{- include "fedsec-operator.imageRef" (dict "image" .Values.runtimeImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
Whether to render the ServiceMonitor: asked for, and the cluster serves the API (or the check is skipped).
*/}}
{{- define "fedsec-operator.serviceMonitor" -}}
{{- if and .Values.serviceMonitor.enabled (or .Values.serviceMonitor.skipApiCheck (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end }}
{{- end }}
