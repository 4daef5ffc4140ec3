// Package darwin holds agentidd's darwin implementations of the platform interfaces (secret store, process inspection,
// consent prompter). Each file is build-tagged darwin; this untagged file lets every OS import the package, so that
// platform/osimpl can link in the right implementation without tags of its own. The implementations register
// themselves with package platform in init.
package darwin
