{{/* Names and labels. */}}
{{- define "coatcheck.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "coatcheck.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "coatcheck.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "coatcheck.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "coatcheck.selector" -}}
app.kubernetes.io/name: {{ include "coatcheck.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "coatcheck.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "coatcheck.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "coatcheck.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The front-ends that are on, admin first: name -> settings. */}}
{{- define "coatcheck.frontends" -}}
{{- $on := dict "admin" .Values.gateway.frontends.admin -}}
{{- range $name, $fe := .Values.gateway.frontends -}}
{{- if and (ne $name "admin") $fe.enabled -}}
{{- $_ := set $on $name $fe -}}
{{- end -}}
{{- end -}}
{{- toYaml $on -}}
{{- end -}}

{{/* The probes' Host header: the admin listener answers to localhost (admin.allowedHosts). */}}
{{- define "coatcheck.probeHeaders" -}}
httpHeaders:
  - name: Host
    value: localhost
{{- end -}}
